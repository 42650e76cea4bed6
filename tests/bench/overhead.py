"""``rollout_overhead_ratio``: a whole compressed rollout under ``dag.test`` against its same-shape baseline.

The real DAG is built from ``include/plans/bench.json`` (the sandbox plan with every wait at
zero and 100 ms polls) and runs against the sandbox with every delay at zero
(``sandbox_proc.ZERO_TIMING``); the approver answers the prod approval at once. The
baseline is the same-shape EmptyOperator DAG generated from the real one (``shape.py``:
same tasks, TaskGroups, mapped widths, trigger rules and dependencies). Both run with
``dag.test()`` in this process on one SQLite metadata DB, alternately, after one untimed
warm-up run each; the figure is the ratio of the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.util
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

from tests.bench.common import BUILD, ROOT, emit, median
from tests.bench.sandbox_proc import ZERO_TIMING, SandboxProcess

HOME = BUILD / "airflow-overhead"
SHAPE_DIR = BUILD / "shape-rollout"
PLAN = "bench"


def _setup_airflow(base_url: str) -> None:
    from tests.harness.env import airflow_env

    HOME.mkdir(parents=True, exist_ok=True)
    SHAPE_DIR.mkdir(parents=True, exist_ok=True)
    os.environ.update(airflow_env(HOME, base_url, plan=PLAN))
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "ERROR"
    bundles = [
        {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
        {"name": "bench-shape", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
         "kwargs": {"path": str(SHAPE_DIR)}},
    ]
    os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(bundles)
    from airflow.utils import db

    marker = HOME / ".migrated"
    if not marker.exists():
        db.resetdb(skip_init=False)
        marker.write_text("ok")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _real_dag():
    return _load(ROOT / "dags" / "immutable_image_rollout.py", "bench_rollout_dag").dag


def _shape_dag(real):
    from tests.bench.shape import SHAPE_SUFFIX, describe, shape_module_source

    path = SHAPE_DIR / "rollout_shape.py"
    source = shape_module_source([real])
    if not path.exists() or path.read_text() != source:
        path.write_text(source)
    shape = _load(path, "bench_rollout_shape").dag_0
    if describe(shape) != describe(real) or shape.dag_id != real.dag_id + SHAPE_SUFFIX:
        raise RuntimeError("the generated baseline does not have the real DAG's shape")
    return shape


def _ti_key(ti) -> str:
    return ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else "")


class _WaitClock:
    """Time ``dag.test`` spends waiting rather than working: inline triggers and its own sleeps.

    A deferred task's trigger runs inline in ``dag.test``: that is the wait itself (here the
    sandbox's simulated reloads and reports, at its 0.1 s tick) plus the plan's 100 ms polls.
    ``dag.test`` also sleeps 1 s whenever only a Human-in-the-loop task is pending.
    """

    def __init__(self) -> None:
        self.trigger_seconds = 0.0
        self.sleep_seconds = 0.0

    @contextlib.contextmanager
    def installed(self):
        import airflow.sdk.definitions.dag as dag_module

        real_trigger, real_sleep = dag_module._run_inline_trigger, time.sleep
        dag_file = dag_module.__file__

        def trigger(*args, **kwargs):
            started = time.perf_counter()
            try:
                return real_trigger(*args, **kwargs)
            finally:
                self.trigger_seconds += time.perf_counter() - started

        def sleep(seconds):
            if sys._getframe(1).f_code.co_filename == dag_file:
                self.sleep_seconds += seconds
            return real_sleep(seconds)

        dag_module._run_inline_trigger, time.sleep = trigger, sleep
        try:
            yield self
        finally:
            dag_module._run_inline_trigger, time.sleep = real_trigger, real_sleep


def _run(dag, conf: dict | None) -> dict:
    """One ``dag.test`` run: wall seconds, waits, final state, task states and per-task durations."""
    from tests.harness.hitl import Approver

    approver = Approver("Approve", interval=0.25) if conf is not None else None
    if approver:
        approver.start()
    clock = _WaitClock()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()), clock.installed():
            dr = dag.test(run_conf=conf)
    finally:
        seconds = time.perf_counter() - started
        if approver:
            approver.stop()
    tis = dr.get_task_instances()
    return {
        "seconds": seconds,
        "wait_seconds": clock.trigger_seconds + clock.sleep_seconds,
        "trigger_seconds": clock.trigger_seconds,
        "dag_test_sleep_seconds": clock.sleep_seconds,
        "state": str(dr.state),
        "tasks": {_ti_key(ti): str(ti.state) for ti in tis},
        "durations": {_ti_key(ti): (ti.end_date - ti.start_date).total_seconds()
                      for ti in tis if ti.start_date and ti.end_date},
        "task_instances": len(tis),
    }


def _ok(run: dict) -> bool:
    bad = [t for t, s in run["tasks"].items() if s not in ("success", "skipped")]
    return run["state"] == "success" and not bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, default=None, help="also cProfile one real run into this file")
    args = parser.parse_args(argv)
    with SandboxProcess() as sandbox:
        _setup_airflow(sandbox.url)
        real_run, shape_run = _runners(sandbox)
        measured = _measure(real_run, shape_run, args.rounds)
        if measured is None:
            return 1
        real_runs, shape_runs = measured
        profile_top = _profile(real_run, args.profile) if args.profile else None
    result = _figures(real_runs, shape_runs, args.rounds)
    if profile_top:
        (BUILD / "overhead-profile.txt").write_text(profile_top)
        result["rollout_profile"] = str(BUILD / "overhead-profile.txt")
    emit(result)
    return 0


def _runners(sandbox):
    """One real rollout (the sandbox reset to zero timing, no build claimed) and one same-shape baseline
    run: what each round times."""
    from airflow.models.variable import Variable

    from image_rollout.operators.base import ACTIVE_BUILD_VARIABLE

    real = _real_dag()
    shape = _shape_dag(real)

    def real_run() -> dict:
        sandbox.reset(ZERO_TIMING)
        Variable.delete(ACTIVE_BUILD_VARIABLE)
        conf = {"build_name": sandbox.state()["builds"]["new"]}
        run = _run(real, conf)
        state = sandbox.state()
        new = state["images"]["new"]
        run["promoted"] = sum(1 for v in state["flag"]["rules"].values() if v == new)
        return run

    def shape_run() -> dict:
        return _run(shape, None)

    return real_run, shape_run


def _measure(real_run, shape_run, rounds: int) -> tuple[list[dict], list[dict]] | None:
    """One untimed warm-up run of each, then ``rounds`` pairs alternating which goes first (so neither
    always runs on a warmer process). None, with the error emitted, when any run did not succeed: a
    failed rollout's time is not the overhead."""
    warm = {"real": real_run(), "shape": shape_run()}
    for kind, run in warm.items():
        if not _ok(run):
            emit({"error": f"warm-up {kind} run did not succeed: {run['state']} {run['tasks']}"})
            return None
    real_runs, shape_runs = [], []
    for i in range(rounds):
        pair = [("real", real_run), ("shape", shape_run)]
        if i % 2:
            pair.reverse()
        for kind, fn in pair:
            run = fn()
            if not _ok(run):
                emit({"error": f"{kind} run {i} did not succeed: {run['state']} {run['tasks']}"})
                return None
            (real_runs if kind == "real" else shape_runs).append(run)
    return real_runs, shape_runs


def _profile(real_run, path: Path) -> str:
    """cProfile one more real run into ``path``; its top 40 functions by cumulative time, as text."""
    profiler = cProfile.Profile()
    profiler.enable()
    real_run()
    profiler.disable()
    profiler.dump_stats(str(path))
    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("cumulative").print_stats(40)
    return out.getvalue()


def _figures(real_runs: list[dict], shape_runs: list[dict], rounds: int) -> dict:
    """The bench's figures from the timed runs: medians, the ratio with and without the waits inside the
    run, and the slowest tasks of the real rollout."""
    real_s = [r["seconds"] for r in real_runs]
    shape_s = [r["seconds"] for r in shape_runs]
    slowest = {}
    for run in real_runs:
        for task, secs in run["durations"].items():
            slowest.setdefault(task, []).append(secs)
    net_s = [r["seconds"] - r["wait_seconds"] for r in real_runs]
    shape_net = [r["seconds"] - r["wait_seconds"] for r in shape_runs]
    top = sorted(((t, median(v)) for t, v in slowest.items()), key=lambda x: -x[1])[:8]
    return {
        "rollout_overhead_ratio": round(median(real_s) / median(shape_s), 3),
        "rollout_seconds": round(median(real_s), 2),
        "rollout_shape_seconds": round(median(shape_s), 2),
        "rollout_overhead_ratio_excluding_waits": round(median(net_s) / median(shape_net), 3),
        "rollout_wait_seconds": {k: round(median([r[k] for r in real_runs]), 2)
                                 for k in ("trigger_seconds", "dag_test_sleep_seconds")},
        "rollout_task_seconds": {"real": round(median([sum(r["durations"].values()) for r in real_runs]), 2),
                                 "shape": round(median([sum(r["durations"].values()) for r in shape_runs]), 2)},
        "rollout_samples": {"real": [round(x, 2) for x in real_s], "shape": [round(x, 2) for x in shape_s]},
        "rollout_task_instances": {"real": real_runs[0]["task_instances"], "shape": shape_runs[0]["task_instances"]},
        "rollout_targets_promoted": real_runs[-1]["promoted"],
        "rollout_slowest_tasks": [[t, round(s, 3)] for t, s in top],
        "rollout_rounds": rounds,
    }

if __name__ == "__main__":
    sys.exit(main())
