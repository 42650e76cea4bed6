"""``make scenario``: one whole compressed run against the sandbox, in-process with ``dag.test()``.

Starts (or reuses) the sandbox, resets it (``RESET=none``: keeps the sandbox and the Airflow records as
the last scenario left them), applies FAULTS, runs ``DAG`` (default ``immutable_image_rollout``; also
``immutable_image_backout``) with the sandbox plan, plays the prod approver, and writes the sandbox's
final state to ``build/scenario-state.json`` (and the run's task states to ``build/scenario-result.json``).
Exits 0 when the run reached a terminal state, success or stopped safely; non-zero only when
the harness itself broke.

``DAG=immutable_image_backout`` without ``RESET=none`` resets the sandbox and runs the rollout of its new
build first. A backout after a rollout kept in a running sandbox (``make sandbox`` in another terminal)::

    make scenario
    make scenario DAG=immutable_image_backout RESET=none \
        CONF='{"build_name": "533-1251-880-20211101", "targets": ["dev-south", "ap-south"], "reason": "test"}'
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

from tests.harness.env import BUILD, ROOT, airflow_env, ensure_sandbox, sandbox_call

ZERO_TIMING = {"reload_seconds": 0, "autorecovery_interval_seconds": 0.05, "approval_delay_seconds": 0,
               "report_interval_seconds": 0.1, "rebuild_seconds": 0}


def parse_faults(text: str) -> list[str]:
    return [f.strip() for f in (text or "").split(",") if f.strip()]


def prepare_airflow(home: Path, base_url: str) -> None:
    """Point this process's Airflow at ``home`` (SQLite) and the sandbox; create the DB once."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(airflow_env(home, base_url))
    from airflow.utils import db

    marker = home / ".migrated"
    if not marker.exists():
        db.resetdb(skip_init=False)
        marker.write_text("ok")


ROLLOUT = "immutable_image_rollout"
BACKOUT = "immutable_image_backout"
DAGS = (ROLLOUT, BACKOUT)


def load_dag(dag_id: str = ROLLOUT):
    """The DAG of ``dags/<dag_id>.py`` (one DAG file per DAG, named after it)."""
    if dag_id not in DAGS:
        raise ValueError(f"DAG={dag_id!r}: make scenario runs one of {', '.join(DAGS)}")
    spec = importlib.util.spec_from_file_location(f"{dag_id}_dag", ROOT / "dags" / f"{dag_id}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def load_rollout_dag():
    return load_dag(ROLLOUT)


def default_conf(base_url: str, dag_id: str) -> dict:
    """The sandbox's new build; for a backout, from every target, with a reason."""
    build = sandbox_call(base_url, "/_sandbox/state")["builds"]["new"]
    if dag_id == BACKOUT:
        return {"build_name": build, "targets": "all", "reason": "make scenario: back out the new build"}
    return {"build_name": build}


def set_variable(key: str, value: str | None) -> None:
    """Set (or, with ``None``, delete) an Airflow Variable in the metadata DB, as an SRE's UI or CLI does.

    Safe from a thread beside ``dag.test()``: ``airflow.models.Variable.set``/``delete`` there go through
    the running task's in-process supervisor channel (they look for ``SUPERVISOR_COMMS``), which is not
    thread-safe; a test thread using it made Airflow 3.3.2 fail the task it borrowed the channel from
    (``NameError: SUPERVISOR_COMMS``), so a held task lost its hold announcement on the retry.
    """
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(Variable).where(Variable.key == key))
        if value is not None:
            session.add(Variable(key=key, val=value))


def reset_airflow_state() -> None:
    """Forget the previous scenario's claim on the flag (the sandbox was reset too)."""
    from image_rollout.operators.base import ACTIVE_BUILD_VARIABLE

    set_variable(ACTIVE_BUILD_VARIABLE, None)


def xcoms(run_id: str, dag_id: str = "immutable_image_rollout") -> dict[str, object]:
    """Every XCom of a run, as ``{"task_id[map_index]:key": value}`` (for assertions)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    out = {}
    with create_session() as session:
        for row in session.scalars(XComModel.get_many(run_id=run_id, dag_ids=dag_id)).all():
            index = f"[{row.map_index}]" if row.map_index >= 0 else ""
            out[f"{row.task_id}{index}:{row.key}"] = XComModel.deserialize_value(row)
    return out


def run_scenario(base_url: str, *, faults: list[str], conf: dict | None, approve: str = "Approve",
                 timing: dict | None = None, variables: dict | None = None, reset: bool | dict = True,
                 dag_id: str = ROLLOUT, mark_success: str | None = None) -> dict:
    """Run one rollout (or ``dag_id``'s run); return ``{"state": sandbox state, "run_state", "tasks", "xcoms", "error"}``.

    ``reset=False`` runs again against the sandbox as the last run left it (a rerun); a dict is the
    body of ``POST /_sandbox/reset`` (e.g. ``{"launchdarkly": {"approvalSettings": {...}}}``), with
    ``timing`` merged into it. ``mark_success`` is a task-id pattern that ``dag.test`` marks success
    instead of running, as an operator's *Mark success* would.
    """
    from tests.harness.hitl import Approver

    if reset is not False:
        body = dict(reset) if isinstance(reset, dict) else {}
        if timing:
            body["timing"] = {**body.get("timing", {}), **timing}
        sandbox_call(base_url, "/_sandbox/reset", body)
        reset_airflow_state()
    if faults:
        sandbox_call(base_url, "/_sandbox/faults", {"faults": faults})
    for key, value in (variables or {}).items():
        set_variable(key, value)
    if conf is None:
        conf = default_conf(base_url, dag_id)
    dag = load_dag(dag_id)
    # The ORM is set up here, before the approver thread's first query: that query racing dag.test()'s
    # first import of a model module deadlocks (SQLAlchemy's configure lock against the import lock), which
    # a run without a reset (RESET=none, in a fresh process) hit.
    import airflow.models.dagbag  # noqa: F401
    from sqlalchemy.orm import configure_mappers

    configure_mappers()
    approver = Approver(approve)
    approver.start()
    result: dict = {"dag_id": dag_id, "conf": conf, "faults": faults, "error": None, "run_state": None, "tasks": {}, "xcoms": {}}
    started = time.monotonic()
    try:
        dr = dag.test(run_conf=conf, mark_success_pattern=mark_success)
        result["run_state"] = str(dr.state)
        result["tasks"] = {
            f"{ti.task_id}" + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state)
            for ti in dr.get_task_instances()
        }
        result["run_id"] = dr.run_id
        result["xcoms"] = xcoms(dr.run_id, dag_id)
    except Exception as exc:  # a refused conf is an outcome, not a harness failure
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["run_state"] = "refused"
    finally:
        approver.stop()
    result["approved"] = approver.answered
    result["seconds"] = round(time.monotonic() - started, 1)
    result["state"] = sandbox_call(base_url, "/_sandbox/state")
    return result


def summarize(result: dict) -> str:
    state = result["state"]
    new = state["images"]["new"]
    rules = state["flag"]["rules"]
    lines = [f"{result.get('dag_id', ROLLOUT)} run: {result['run_state']} in {result['seconds']}s  "
             f"faults={result['faults'] or '-'}"]
    if result["error"]:
        lines.append(f"refused: {result['error'][:300]}")
    lines.append("targets serving the new build: "
                 f"{sum(1 for v in rules.values() if v == new)}/{len(rules)}")
    lines.append(f"promotions: {len(state['promotions'])}, evidence commits: {len(state['evidence']['commits'])}, "
                 f"slack messages: {len(state['slack'])}")
    backout = result.get("xcoms", {}).get("restore_targets:return_value")
    if isinstance(backout, dict):
        lines.append(f"backout restored: {', '.join(r['target'] for r in backout['restored']) or 'none'}; "
                     f"left alone: {', '.join(x['target'] for x in backout['left_alone']) or 'none'}")
    resolved = result.get("xcoms", {}).get("resolve_backout:return_value")
    if isinstance(resolved, dict) and resolved.get("dry_run"):
        lines.append(resolved["plan"])
    failed = [t for t, s in result["tasks"].items() if s in ("failed", "upstream_failed")]
    if failed:
        lines.append(f"failed tasks: {', '.join(failed)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default="")
    parser.add_argument("--conf", default="")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SANDBOX_PORT", 8765)))
    parser.add_argument("--reject", action="store_true", help="reject the prod change instead of approving it")
    parser.add_argument("--reset", default="", help="JSON body for POST /_sandbox/reset (RESET=), or "
                        "'none': keep the sandbox and Airflow records as the last scenario left them")
    parser.add_argument("--dag", default="", help=f"the DAG to run (DAG=): {', '.join(DAGS)}")
    args = parser.parse_args(argv)
    dag_id = args.dag.strip() or ROLLOUT
    if dag_id not in DAGS:
        print(f"DAG={dag_id}: make scenario runs one of {', '.join(DAGS)}", file=sys.stderr)
        return 2
    reset: bool | dict
    if args.reset.strip().lower() == "none":
        reset = False
    else:
        try:
            reset_body = json.loads(args.reset) if args.reset.strip() else {}
        except json.JSONDecodeError as exc:
            print(f"RESET is not JSON: {exc}", file=sys.stderr)
            return 2
        if not isinstance(reset_body, dict):
            print("RESET must be a JSON object (the body of POST /_sandbox/reset) or none", file=sys.stderr)
            return 2
        reset = reset_body or True
    try:
        conf = json.loads(args.conf) if args.conf.strip() else None
    except json.JSONDecodeError as exc:
        print(f"CONF is not JSON: {exc}", file=sys.stderr)
        conf = {"__invalid_json__": args.conf}
    BUILD.mkdir(exist_ok=True)
    try:
        server, base_url = ensure_sandbox(args.port)
        prepare_airflow(BUILD / "airflow-scenario", base_url)
        if dag_id == BACKOUT and reset is False and server is not None:
            print(f"RESET=none: no sandbox was running on port {args.port}, so this one is fresh and no rollout "
                  "is in it (start `make sandbox` in another terminal, then `make scenario`, to keep one)",
                  file=sys.stderr)
        if dag_id == BACKOUT and reset is not False:
            # A fresh sandbox has nothing to back out: roll the new build out first, in the same state.
            rollout = run_scenario(base_url, faults=[], conf=None, reset=reset)
            print(summarize(rollout))
            reset = False
        result = run_scenario(base_url, faults=parse_faults(args.faults), conf=conf,
                              approve="Reject" if args.reject else "Approve", reset=reset, dag_id=dag_id)
    except Exception:
        traceback.print_exc()
        return 2
    (BUILD / "scenario-state.json").write_text(json.dumps(result["state"], indent=2, sort_keys=True))
    (BUILD / "scenario-result.json").write_text(
        json.dumps({k: v for k, v in result.items() if k not in ("state", "xcoms")}, indent=2, sort_keys=True)
    )
    print(summarize(result))
    print(f"state written to {BUILD / 'scenario-state.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
