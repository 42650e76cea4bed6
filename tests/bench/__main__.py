"""``make bench``: run every benchmark part, print the figures (``name: value``) and a table.

Parts (each in its own interpreter; output in ``build/bench/<part>.log``):

* ``parse``          dag_parse_seconds, dag_parse_ratio, dag_parse_ratio_same_params (+ its CPU-time twin)
* ``reports_bench``  counts_report_rows_per_second (+ memory for 1M vs 4M rows)
* ``overhead``       rollout_overhead_ratio (dag.test, waits and sandbox delays at zero)
* ``scheduler``      slots_held_during_waits, calendar_overhead_percent (real scheduler, PostgreSQL)
* ``restore``        canary_detect_to_restore_seconds (+ _production), soak calls per day (real scheduler)

All results go to ``build/bench/results.json``. ``--only parse,overhead`` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from tests.bench.common import BUILD, run_part

PARTS = ("parse", "reports_bench", "overhead", "scheduler", "restore")

#: figure -> (goal text, check)
GOALS = {
    "dag_parse_seconds": ("-", None),
    "dag_parse_ratio": ("<= 1.5", lambda v: v <= 1.5),
    "dag_parse_ratio_same_params": ("<= 1.5", lambda v: v <= 1.5),
    "dag_parse_cpu_ratio_same_params": ("<= 1.5", lambda v: v <= 1.5),
    "dag_parse_network_db_variable_access": ("0", lambda v: v == 0),
    "rollout_overhead_ratio": ("<= 1.5", lambda v: v <= 1.5),
    "slots_held_during_waits": ("0", lambda v: v == 0),
    "counts_report_rows_per_second": (">= 1000000", lambda v: v >= 1_000_000),
    "counts_report_memory_growth_4m_vs_1m": ("flat (~1.0)", lambda v: v <= 1.25),
    "calendar_overhead_percent": ("< 1", lambda v: v < 1),
    "canary_detect_to_restore_seconds": ("-", None),
    "canary_detect_to_restore_seconds_production": ("<= 60", lambda v: v <= 60),
    "soak_pagerduty_calls_per_day": ("-", None),
    "soak_chlorine_calls_per_day": ("-", None),
}


def machine() -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gib = "?"
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        mem_gib = round(kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gib": mem_gib, "python": platform.python_version(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def figures(results: dict) -> dict:
    """The headline figures, from the parts' results (missing when a part failed)."""
    out: dict = {}
    p = results.get("parse", {})
    if "dag_parse_ratio" in p:
        out["dag_parse_seconds"] = p["dag_parse_seconds"]
        out["dag_parse_ratio"] = p["dag_parse_ratio"]
        out["dag_parse_ratio_same_params"] = p["dag_parse_ratio_same_params"]
        out["dag_parse_cpu_ratio_same_params"] = p["dag_parse_cpu_ratio_same_params"]
        out["dag_parse_network_db_variable_access"] = sum(p["dag_parse_access"].values())
    o = results.get("overhead", {})
    if "rollout_overhead_ratio" in o:
        out["rollout_overhead_ratio"] = o["rollout_overhead_ratio"]
    s = results.get("scheduler", {})
    if "slots_held_during_waits" in s:
        out["slots_held_during_waits"] = s["slots_held_during_waits"]
    r = results.get("reports_bench", {})
    if "counts_report_rows_per_second" in r:
        out["counts_report_rows_per_second"] = r["counts_report_rows_per_second"]
        out["counts_report_memory_growth_4m_vs_1m"] = r["counts_report_rss_growth_ratio_4m_vs_1m"]
    if "calendar_overhead_percent" in s:
        out["calendar_overhead_percent"] = s["calendar_overhead_percent"]
    c = results.get("restore", {})
    if "canary_detect_to_restore_seconds" in c:
        out["canary_detect_to_restore_seconds"] = c["canary_detect_to_restore_seconds"]
        out["canary_detect_to_restore_seconds_production"] = c["canary_detect_to_restore_seconds_production"]
        out["soak_pagerduty_calls_per_day"] = c["canary_soak_calls_per_day_production"]["pagerduty"]
        out["soak_chlorine_calls_per_day"] = c["canary_soak_calls_per_day_production"]["chlorine"]
    return out


def details(results: dict) -> list[str]:
    """Context for the figures: the numbers behind each ratio."""
    lines = []
    p = results.get("parse", {})
    if "dag_parse_ratio" in p:
        lines.append(f"  parse: dags/ {p['dag_parse_seconds'] * 1000:.1f} ms vs baseline "
                     f"{p['dag_parse_shape_seconds'] * 1000:.1f} ms, baseline with the same Params "
                     f"{p['dag_parse_shape_params_seconds'] * 1000:.1f} ms (median of {p['dag_parse_rounds']}, "
                     f"{p['dag_parse_dags']['real']['tasks']} tasks); costliest imports (ms, each alone): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(p.get("dag_parse_import_costs_ms", {}).items(),
                                                              key=lambda kv: -kv[1])))
    o = results.get("overhead", {})
    if "rollout_overhead_ratio" in o:
        lines.append(f"  dag.test: rollout {o['rollout_seconds']} s vs baseline {o['rollout_shape_seconds']} s "
                     f"(median of {o['rollout_rounds']}, {o['rollout_task_instances']['real']} task instances each); "
                     f"waiting inside the rollout {o['rollout_wait_seconds']}; ratio without those waits "
                     f"{o['rollout_overhead_ratio_excluding_waits']}")
    r = results.get("reports_bench", {})
    if "counts_report_rows_per_second" in r:
        lines.append(f"  reports: {r['counts_report_rows']} rows in {r['counts_report_seconds']} s (best of "
                     f"{r['counts_report_repeat']}; median {r['counts_report_rows_per_second_median']} rows/s); "
                     f"{r['counts_report_big_rows']} rows at {r['counts_report_big_rows_per_second']} rows/s; "
                     f"peak RSS growth {r['counts_report_rss_growth_kib']} KiB")
    s = results.get("scheduler", {})
    if "calendar_compressed" in s:
        c, prod = s["calendar_compressed"], s["calendar_production"]
        lines.append(f"  real scheduler: run {s['scheduler_run_state']}, wall {c['wall_seconds']} s = mandated waits "
                     f"{c['mandated_seconds']} s + overhead {c['overhead_seconds']} s ({c['percent']} % compressed; "
                     f"{c.get('between_tasks_seconds')} s of the wall time no task instance was running or deferred); "
                     f"samples during bake/soak {s['slots_watched']}")
        lines.append(f"  production ({prod['mandated_hours']} h of mandated waits): overhead "
                     f"{prod['overhead_expected_minutes']} min expected = {prod['percent_expected']} %, "
                     f"worst {prod['overhead_worst_minutes']} min = {prod['percent_worst']} %; "
                     f"poll intervals {prod['polls']}; with adoption.poll 5m: "
                     f"{prod.get('percent_expected_if_adoption_poll_5m')} %")
    c = results.get("restore", {})
    if "canary_detect_to_restore_seconds" in c:
        prod, before = c["canary_soak_calls_per_day_production"], c["canary_soak_calls_per_day_before"]
        lines.append(f"  canary: incident {c['canary_incident']['created_at']} -> ap-south restored "
                     f"{c['canary_restored']['time']}: {c['canary_detect_to_restore_seconds']} s = detection "
                     f"{c['canary_detect_seconds']} s + restore {c['canary_restore_seconds']} s (sandbox soak polls "
                     f"{c['canary_soak_poll_sandbox']}, Airflow loops: {c['airflow_loops']})")
        lines.append(f"  canary at production polls {c['canary_soak_poll_production']}: worst "
                     f"{c['canary_detect_to_restore_seconds_production']} s, expected "
                     f"{c['canary_detect_to_restore_seconds_production_expected']} s (was "
                     f"{c['canary_detect_to_restore_seconds_production_before']} s with PagerDuty read every poll); "
                     f"calls per soak-day {prod} (was {before})")
    return lines


def table(figs: dict, *, complete: bool = True) -> str:
    """Figure, value, goal, met; a missing figure is an error unless only some parts ran."""
    rows = [("figure", "value", "goal", "met")]
    for name, (goal, check) in GOALS.items():
        if name not in figs and not complete:
            continue
        if name not in figs:
            rows.append((name, "n/a", goal, "ERROR"))
            continue
        met = "-" if check is None else ("yes" if check(figs[name]) else "NO")
        rows.append((name, str(figs[name]), goal, met))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {sorted(unknown)}")
    info = machine()
    started = time.monotonic()
    results: dict = {}
    for part in parts:
        print(f"[bench] {part} ...", file=sys.stderr, flush=True)
        results[part] = run_part(part)
        note = results[part].get("error")
        print(f"[bench] {part} done in {results[part]['part_seconds']} s" + (f": ERROR {note}" if note else ""),
              file=sys.stderr, flush=True)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    info["bench_seconds"] = round(time.monotonic() - started, 1)
    figs = figures(results)
    for name, value in figs.items():
        print(f"{name}: {value}")
    print()
    print(table(figs, complete=set(parts) == set(PARTS)))
    print()
    print("\n".join(details(results)))
    print(f"  machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory_gib']} GiB, Python {info['python']}; "
          f"load average {info['loadavg_start']} -> {info['loadavg_end']}; bench took {info['bench_seconds']} s")
    BUILD.mkdir(parents=True, exist_ok=True)
    (BUILD / "results.json").write_text(json.dumps({"figures": figs, "machine": info, "parts": results},
                                                   indent=2, sort_keys=True, default=str))
    print(f"  all results: {BUILD / 'results.json'}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
