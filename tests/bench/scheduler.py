"""``slots_held_during_waits`` and ``calendar_overhead_percent``: one rollout on the real scheduler.

A throwaway PostgreSQL database on 127.0.0.1:5432, the stack of ``tests/harness/stack.py``
(scheduler with LocalExecutor, dag-processor, triggerer, api-server from the venv), the
sandbox in its own process with its default (compressed) timing, and the sandbox plan. The
run is triggered over REST as Jenkins does; the bench answers the prod approval over the
HITL REST API as a person would.

While the run goes, the task instances of the run are read from the metadata DB five times a
second. ``slots_held_during_waits`` is the most task instances in ``running`` seen while the
bake (``bake.wait_bake``) or the canary soak (``canary_soak.soak_gate``) was deferred: a
wait that holds a worker slot shows up here.

Afterwards the mandated waits are taken from what the systems recorded (``calendar_model``):
the run's wall time minus their union is what the product and Airflow added.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
import urllib.request
from datetime import UTC, datetime

from tests.bench import calendar_model
from tests.bench.common import BUILD, emit
from tests.bench.sandbox_proc import SandboxProcess

HOME = BUILD / "airflow-stack"
DAG_ID = "immutable_image_rollout"
PLAN = "sandbox"
BAKE_TASK = "bake.wait_bake"
SOAK_TASK = "canary_soak.soak_gate"
WAITING = ("deferred", "awaiting_input")
HUMAN_SECONDS = 3.0  # how long the bench's approver takes to answer the prod approval


def _pg(db_url: str):
    import psycopg2

    dsn = db_url.replace("postgresql+psycopg2://", "postgresql://", 1)
    conn = psycopg2.connect(dsn, connect_timeout=10)
    conn.autocommit = True
    return conn


def _key(task_id: str, map_index: int) -> str:
    return task_id + (f"[{map_index}]" if map_index >= 0 else "")


class Sampler:
    """Task-instance states of one run, read straight from the metadata DB."""

    def __init__(self, conn, run_id: str) -> None:
        self.conn = conn
        self.run_id = run_id
        self.samples: list[dict] = []

    def sample(self) -> dict:
        with self.conn.cursor() as cur:
            cur.execute("SELECT task_id, map_index, state FROM task_instance WHERE dag_id=%s AND run_id=%s",
                        (DAG_ID, self.run_id))
            rows = cur.fetchall()
            cur.execute("SELECT state FROM dag_run WHERE dag_id=%s AND run_id=%s", (DAG_ID, self.run_id))
            run = cur.fetchone()
        states = {_key(t, m): s for t, m, s in rows}
        entry = {"t": time.time(), "run": run[0] if run else None, "states": states}
        self.samples.append(entry)
        return entry

    def slots(self) -> dict:
        """Most TIs running while each wait was deferred (mapped siblings of the wait not counted)."""
        per_wait: dict[str, dict] = {}
        for s in self.samples:
            running = [k for k, v in s["states"].items() if v == "running"]
            for key, state in s["states"].items():
                if state not in WAITING:
                    continue
                task = key.split("[")[0]
                others = [r for r in running if r.split("[")[0] != task]
                entry = per_wait.setdefault(task, {"samples": 0, "max_running": 0, "running_seen": []})
                entry["samples"] += 1
                if len(others) > entry["max_running"]:
                    entry["max_running"] = len(others)
                    entry["running_seen"] = others
        return per_wait


def _timestamps(conn, run_id: str) -> dict:
    with conn.cursor() as cur:
        cur.execute("SELECT queued_at, start_date, end_date, state FROM dag_run WHERE dag_id=%s AND run_id=%s",
                    (DAG_ID, run_id))
        queued, start, end, state = cur.fetchone()
        cur.execute("SELECT task_id, map_index, state, start_date, end_date, try_number FROM task_instance "
                    "WHERE dag_id=%s AND run_id=%s", (DAG_ID, run_id))
        tis = {_key(t, m): {"state": s, "start": a, "end": b, "try": n} for t, m, s, a, b, n in cur.fetchall()}
        cur.execute("SELECT ti.task_id, h.created_at, h.responded_at FROM hitl_detail h "
                    "JOIN task_instance ti ON ti.id = h.ti_id WHERE ti.dag_id=%s AND ti.run_id=%s", (DAG_ID, run_id))
        hitl = [{"task_id": t, "created_at": c, "responded_at": r} for t, c, r in cur.fetchall()]
    return {"queued_at": queued, "start": start, "end": end, "state": state, "tis": tis, "hitl": hitl}


def _report_time(sandbox_url: str, number: int) -> datetime | None:
    from image_rollout.plan import load_plan

    job = load_plan(PLAN).jenkins.report_job
    path = "".join(f"/job/{part}" for part in job.split("/"))
    try:
        with urllib.request.urlopen(f"{sandbox_url}/jenkins{path}/{number}/api/json", timeout=10) as resp:
            return datetime.fromtimestamp(json.loads(resp.read())["timestamp"] / 1000, tz=UTC)
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args(argv)
    from tests.harness.stack import AirflowStack, create_database, drop_database, run_id_for

    shutil.rmtree(HOME, ignore_errors=True)
    result: dict = {}
    timings: dict = {}
    started = time.monotonic()
    with SandboxProcess() as sandbox:
        db_name, db_url = create_database("airflow_bench")
        result["database"] = db_name
        try:
            with AirflowStack(HOME, sandbox.url, db_url=db_url, plan=PLAN) as stack:
                timings["stack_start_seconds"] = round(time.monotonic() - started, 1)
                stack.wait_dag()
                stack.unpause()
                sandbox.reset()
                state0 = sandbox.state()
                build = state0["builds"]["new"]
                run_id = run_id_for(build)
                stack.trigger_rollout(build)
                conn = _pg(db_url)
                sampler = Sampler(conn, run_id)
                approvals: list = []
                deadline = time.monotonic() + args.timeout
                last_approve = 0.0
                parked_since: float | None = None
                while time.monotonic() < deadline:
                    entry = sampler.sample()
                    if entry["run"] in ("success", "failed"):
                        break
                    parked = "awaiting_input" in entry["states"].values()
                    parked_since = (parked_since or time.monotonic()) if parked else None
                    # A person answers seconds later, not at once: an answer within ~1 s of the request
                    # can beat the executor's report that the parking process ended, and Airflow 3.3.2
                    # then fails the task ("finished with state success, but ... state attribute is
                    # queued"). The time until the answer counts as the person's (a mandated wait).
                    if (parked and time.monotonic() - parked_since >= HUMAN_SECONDS
                            and time.monotonic() - last_approve > 0.5):
                        last_approve = time.monotonic()
                        with contextlib.suppress(Exception):  # the api-server may be busy: next sample
                            approvals += stack.approve_pending(run_id)
                    stack.check_alive()
                    time.sleep(0.2)
                else:
                    raise TimeoutError(f"run {run_id} did not finish in {args.timeout}s")
                recorded = _timestamps(conn, run_id)
                adoption = None
                with contextlib.suppress(Exception):
                    adoption = stack.xcom(run_id, "rollout_monitoring.monitor_adoption")
                state = sandbox.state()
                conn.close()
                result["peak_rss_mb"] = stack.peak_rss.get("rss_mb")
        finally:
            if not args.keep_db:
                with contextlib.suppress(Exception):
                    drop_database(db_name)
        report_time = None
        if isinstance(adoption, dict) and adoption.get("report_build"):
            report_time = _report_time(sandbox.url, int(adoption["report_build"]))
    slots = sampler.slots()
    watched = {t: slots.get(t, {"samples": 0, "max_running": 0}) for t in (BAKE_TASK, SOAK_TASK)}
    import msgspec

    from image_rollout.plan import load_plan

    windows = calendar_model.mandated_windows(
        plan=load_plan(PLAN), state=state, hitl=recorded["hitl"], adoption_report_time=report_time,
    )
    compressed = calendar_model.compressed_overhead(recorded["queued_at"], recorded["end"], windows)
    prod_plan = load_plan("default")
    production = calendar_model.production_estimate(compressed["overhead_seconds"], prod_plan)
    # What-if: the one production poll that dominates, at 5 minutes.
    faster = msgspec.structs.replace(prod_plan, adoption=msgspec.structs.replace(prod_plan.adoption, poll=300.0))
    production["percent_expected_if_adoption_poll_5m"] = calendar_model.production_estimate(
        compressed["overhead_seconds"], faster)["percent_expected"]
    # Where the compressed overhead sits: between task instances (scheduler/executor latency) or inside them.
    ti_windows = [("ti", calendar_model.epoch(v["start"]), calendar_model.epoch(v["end"]))
                  for v in recorded["tis"].values() if v["start"] and v["end"]]
    run_lo, run_hi = calendar_model.epoch(recorded["queued_at"]), calendar_model.epoch(recorded["end"])
    compressed["between_tasks_seconds"] = round(
        (run_hi - run_lo) - calendar_model.union_seconds(ti_windows, run_lo, run_hi), 2)
    failed = [k for k, v in recorded["tis"].items() if v["state"] not in ("success", "skipped")]
    result.update({
        "slots_held_during_waits": max(w["max_running"] for w in watched.values()),
        "slots_watched": {t: {"samples": w["samples"], "max_running": w["max_running"]} for t, w in watched.items()},
        "slots_all_waits": {t: {"samples": w["samples"], "max_running": w["max_running"],
                                "running_seen": w.get("running_seen", [])} for t, w in slots.items()},
        "scheduler_run_state": recorded["state"],
        "scheduler_failed_tasks": failed,
        "scheduler_samples": len(sampler.samples),
        "approvals": len(approvals),
        "calendar_compressed": compressed,
        "calendar_windows": [[w[0], round(w[2] - w[1], 2)] for w in windows],
        "calendar_production": production,
        "calendar_overhead_percent": production["percent_expected"],
        "scheduler_part_timings": timings,
    })
    if recorded["state"] != "success" or not watched[BAKE_TASK]["samples"] or not watched[SOAK_TASK]["samples"]:
        result["error"] = (f"rollout on the real scheduler ended {recorded['state']} (failed: {failed}); "
                           f"bake/soak samples {watched}")
    emit(result)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
