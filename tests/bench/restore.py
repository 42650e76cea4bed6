"""``canary_detect_to_restore_seconds``: from an ``autorecovery_failed`` incident to ap-south restored.

One rollout on the real scheduler (``tests/harness/stack.py`` ``fresh_stack``: scheduler with
LocalExecutor, dag-processor, triggerer, api-server, on a throwaway PostgreSQL database) with the
sandbox plan, and the sandbox in its own process with its default (compressed) timing. Once the
soak gate is deferred (watching, as it is for most of a 24 h soak), the sandbox's control
``POST /_sandbox/faults`` arms ``autorecovery_failed_alert:ap-south``: the region's next autorecovery
reload fails and the sandbox creates an ``autorecovery_failed`` incident in PagerDuty. The bench answers the prod approval over the HITL
REST API (after 3 s, as ``scheduler.py`` does) and reads the sandbox's state until ap-south serves
the previous map again.

Both ends are the systems' own records: the incident's ``created_at`` (PagerDuty) and the time of
ap-south's restoring flag change (LaunchDarkly's record in the sandbox). In between, the soak gate's
decision (XCom ``decision`` of ``canary_soak.soak_gate``, ``decided_at``: the start of the read that
saw the incident) splits it into detection (waiting for the next read) and restore (the read, the
gate failing, the scheduler starting the rollback, the rollback's reads and its flag write).

Airflow's scheduler and triggerer loops run at Airflow's defaults here (the stack harness shortens
them for the tests), so the restore part is what a production deployment pays. The production figure
is ``soak.incident_poll`` of ``include/plans/default.json`` (the longest an incident can wait for
the next PagerDuty read) plus the measured restore part; ``_expected`` uses half the poll.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from datetime import UTC, datetime

from tests.bench.common import BUILD, emit
from tests.bench.sandbox_proc import SandboxProcess
from tests.harness.env import sandbox_call

HOME = BUILD / "airflow-restore"
PLAN = "sandbox"
REGION = "ap-south"
SOAK_TASK = "canary_soak.soak_gate"
HUMAN_SECONDS = 3.0
#: Airflow's own defaults for the loops the stack harness shortens (airflow config get-default-value).
AIRFLOW_DEFAULT_LOOPS = {
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "5",
    "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "5",
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "1",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "30",
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "5",
}


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _incident(state: dict) -> dict | None:
    found = [i for i in state.get("incidents") or []
             if i.get("region") == REGION and "autorecovery_failed" in i.get("title", "")]
    return min(found, key=lambda i: i["created_at"]) if found else None


def _restore(state: dict, previous: dict, after: float) -> dict | None:
    """ap-south's flag change back to ``previous`` (what it served before the new build), after ``after``."""
    for p in state.get("promotions") or []:
        if p["target"] == REGION and _t(p["time"]) >= after and p.get("image_map") == previous:
            return p
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--harness-loops", action="store_true",
                        help="keep the stack harness's shortened Airflow loops instead of Airflow's defaults")
    args = parser.parse_args(argv)
    import msgspec

    from image_rollout.plan import load_plan
    from tests.harness.stack import fresh_stack, run_id_for

    result: dict = {}
    started = time.monotonic()
    extra_env = {} if args.harness_loops else AIRFLOW_DEFAULT_LOOPS
    with SandboxProcess() as sandbox, fresh_stack(HOME, sandbox.url, plan=PLAN, db_prefix="airflow_bench",
                                                  extra_env=extra_env) as stack:
        result["stack_start_seconds"] = round(time.monotonic() - started, 1)
        sandbox.reset()
        build = sandbox.state()["builds"]["new"]
        run_id = run_id_for(build)
        stack.trigger_rollout(build)
        deadline = time.monotonic() + args.timeout
        parked_since = None
        incident = restored = None
        armed = None
        while time.monotonic() < deadline:
            stack.check_alive()
            if incident is None:
                soak = None
                with contextlib.suppress(Exception):  # a busy api-server: look again next time
                    soak = stack.task_states(run_id).get(SOAK_TASK)
                if soak == "deferred" and armed is None:
                    # The soak is watching (as it is for most of its 24 h): now the canary fails.
                    sandbox_call(sandbox.url, "/_sandbox/faults", {"faults": [f"autorecovery_failed_alert:{REGION}"]})
                    armed = time.time()
                if soak == "success":
                    emit({"error": f"the soak passed before the incident (armed: {armed})"})
                    return 1
            state = sandbox.state()
            promoted = [p for p in state.get("promotions") or []
                        if p["target"] == REGION and p.get("image_map") == state["images"]["new"]]
            incident = incident or _incident(state)
            if incident and promoted:
                restored = _restore(state, promoted[0]["from_image_map"], _t(incident["created_at"]))
                if restored:
                    break
            parked = False
            if not promoted:  # the prod approval comes before ap-south's promotion
                with contextlib.suppress(Exception):  # a busy api-server: look again next time
                    parked = bool(stack.pending_approvals(run_id))
            parked_since = (parked_since or time.monotonic()) if parked else None
            if parked and time.monotonic() - parked_since >= HUMAN_SECONDS:
                with contextlib.suppress(Exception):
                    stack.approve_pending(run_id)
            time.sleep(0.25)
        else:
            emit({"error": f"ap-south was not restored within {args.timeout}s (incident: {incident})"})
            return 1
        decision = None
        with contextlib.suppress(Exception):
            decision = stack.xcom(run_id, SOAK_TASK, key="decision")
    sandbox_plan, prod = load_plan(PLAN).soak, load_plan("default").soak
    created, restored_at = _t(incident["created_at"]), _t(restored["time"])
    measured = restored_at - created
    decided = _t(decision["decided_at"]) if isinstance(decision, dict) and decision.get("decided_at") else None
    restore_part = restored_at - decided if decided else measured
    incident_poll = prod.incident_poll or prod.poll
    result.update({
        "canary_detect_to_restore_seconds": round(measured, 2),
        "canary_detect_seconds": round(decided - created, 2) if decided else None,
        "canary_restore_seconds": round(restore_part, 2),
        "canary_detect_to_restore_seconds_production": round(incident_poll + restore_part, 1),
        "canary_detect_to_restore_seconds_production_expected": round(incident_poll / 2 + restore_part, 1),
        # Before soak.incident_poll: PagerDuty was read with everything else, every soak.poll.
        "canary_detect_to_restore_seconds_production_before": round(prod.poll + restore_part, 1),
        "canary_soak_poll_production": {"poll": prod.poll, "incident_poll": prod.incident_poll},
        "canary_soak_poll_sandbox": {"poll": sandbox_plan.poll, "incident_poll": sandbox_plan.incident_poll},
        "canary_soak_calls_per_day_production": prod.calls_per_day(),
        "canary_soak_calls_per_day_before": msgspec.structs.replace(prod, incident_poll=None).calls_per_day(),
        "canary_incident": {"id": incident.get("id"), "created_at": incident["created_at"]},
        "canary_restored": {"time": restored["time"], "image_map": restored["image_map"],
                            "comment": restored.get("comment")},
        "canary_soak_decision": decision,
        "airflow_loops": "harness (shortened)" if args.harness_loops else "Airflow defaults",
        "canary_fault_armed_at": datetime.fromtimestamp(armed, tz=UTC).isoformat() if armed else None,
    })
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
