"""Inconclusive is not failed (issue 9 item 2), end to end against the sandbox with ``dag.test``.

A PagerDuty outage during the canary soak (the PagerDuty connection pointed at a dead port, as a
monitoring outage looks from the rollout) holds the soak gate: it escalates once to the patching
channel and keeps trying. An outage shorter than ``gates.inconclusive_timeout`` never restores a
healthy canary; a longer one asks a person, and "Roll back" then fails the gate and restores.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime

from tests.harness.env import sandbox_call
from tests.harness.scenario import run_scenario
from tests.scenarios.test_fault_matrix import promotions_per_target

SOAK = "canary_soak.soak_gate"
PD_CONN = "AIRFLOW_CONN_PAGERDUTY_DEFAULT"
PATCHING = "#sre-cfs-patching"


def _dead_port_connection() -> str:
    conn = json.loads(os.environ[PD_CONN])
    conn["host"] = "http://127.0.0.1:9/pagerduty"  # discard port: connection refused, at once
    return json.dumps(conn)


@contextmanager
def pagerduty_outage_during_soak(base_url: str, seconds: float | None):
    """From ap-south's promotion on, PagerDuty cannot be reached for ``seconds`` (None: for good)."""
    stop = threading.Event()
    window: dict = {}

    def outage():
        good = os.environ[PD_CONN]
        while not stop.wait(0.2):
            state = sandbox_call(base_url, "/_sandbox/state")
            if state["flag"]["rules"].get("ap-south") == state["images"]["new"]:
                break
        else:
            return
        os.environ[PD_CONN] = _dead_port_connection()
        window["from"] = time.monotonic()
        stop.wait(seconds) if seconds is not None else stop.wait()
        os.environ[PD_CONN] = good
        window["to"] = time.monotonic()

    original = os.environ[PD_CONN]
    thread = threading.Thread(target=outage, daemon=True, name="pagerduty-outage")
    thread.start()
    try:
        yield window
    finally:
        stop.set()
        thread.join(timeout=10)
        os.environ[PD_CONN] = original


def _patching(state) -> list[str]:
    return [m["text"] for m in state["slack"] if m["channel"] == PATCHING]


def test_a_pagerduty_outage_shorter_than_the_timeout_never_restores_a_healthy_canary(rollout_sandbox):
    # 100 s: longer than the old retry budget of the soak task (which failed the soak and rolled back),
    # shorter than the sandbox plan's gates.inconclusive_timeout (120 s).
    with pagerduty_outage_during_soak(rollout_sandbox, 100) as window:
        result = run_scenario(rollout_sandbox, faults=[], conf=None)
    assert window.get("to"), "the outage never started: ap-south was not promoted"
    state, new = result["state"], result["state"]["images"]["new"]
    assert result["tasks"][SOAK] == "success", result["tasks"]
    assert result["tasks"]["rollout_end.rollback"] in ("skipped", "upstream_failed", "removed", "None")
    assert state["flag"]["rules"]["ap-south"] == new
    assert promotions_per_target(state)["ap-south"] == 1  # promoted once, never restored
    texts = _patching(state)
    holding = [t for t in texts if "HOLDING" in t and "ap-south" in t]
    assert len(holding) == 1, texts  # escalated once, not once per poll
    assert any("readable again" in t for t in texts), texts
    assert not any(t.startswith("ROLLBACK") for t in texts)
    soak = result["xcoms"][f"{SOAK}:return_value"]
    assert soak["verdict"] == "pass" and soak["region"] == "ap-south"
    # Measured from ap-south's promotion as LaunchDarkly applied it, not from a cached time.
    assert datetime.fromisoformat(soak["since"].replace("Z", "+00:00")) <= datetime.now(UTC)


def _answer_by_task(choices: dict[str, str], stop: threading.Event, answered: list) -> None:
    """Play the people: each pending Human-in-the-loop request gets the option for its task id."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import handle_event_submit
    from airflow.triggers.base import TriggerEvent
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    while not stop.wait(0.5):
        try:
            with create_session() as session:
                for detail in session.scalars(select(HITLDetail).where(HITLDetail.responded_at.is_(None))).all():
                    ti = session.get(TaskInstance, detail.ti_id)
                    # only a parked request: an answer to a task still DEFERRED is overwritten by its park under
                    # dag.test, and the run then waits forever (as tests/harness/hitl.py says)
                    if ti is None or ti.state != TaskInstanceState.AWAITING_INPUT:
                        continue
                    option = next((o for t, o in choices.items() if ti.task_id.endswith(t)), None)
                    if option is None or option not in detail.options:
                        continue
                    detail.responded_by = {"id": "sre-approver", "name": "sre-approver"}
                    detail.responded_at = datetime.now(UTC)
                    detail.chosen_options = [option]
                    detail.params_input = {}
                    session.add(detail)
                    handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti,
                                        session=session)
                    answered.append((ti.task_id, option))
        except Exception as exc:  # SQLite busy for a moment: try again
            print(f"[people] retrying after {type(exc).__name__}: {exc}")


def test_an_outage_past_the_timeout_asks_and_roll_back_restores(rollout_sandbox, monkeypatch):
    import tests.harness.hitl as hitl

    stop, answered = threading.Event(), []
    people = threading.Thread(target=_answer_by_task, daemon=True,
                              args=({"approve_ap_south": "Approve", "soak_gate": "Roll back"}, stop, answered))

    class Nobody(threading.Thread):  # the harness's approver answers "Approve" to everything: not here
        answered: list = []

        def __init__(self, *a, **k):
            super().__init__(daemon=True)

        def run(self):
            pass

        def stop(self):
            pass

    monkeypatch.setattr(hitl, "Approver", Nobody)
    people.start()
    try:
        with pagerduty_outage_during_soak(rollout_sandbox, None) as window:
            result = run_scenario(rollout_sandbox, faults=[], conf=None)
    finally:
        stop.set()
        people.join(timeout=5)
    assert window.get("from"), "the outage never started"
    state = result["state"]
    assert ("canary_soak.soak_gate", "Roll back") in answered, answered
    assert result["tasks"][SOAK] == "failed"
    assert result["tasks"]["rollout_end.rollback"] == "success"
    assert state["flag"]["rules"]["ap-south"] == state["images"]["previous"]
    texts = _patching(state)
    assert len([t for t in texts if "HOLDING" in t]) == 1
    assert any(t.startswith("Decision needed: ap-south") for t in texts)
    assert any("sre-approver chose Roll back" in t for t in texts)
    decision = result["xcoms"][f"{SOAK}:decision"]
    assert decision["verdict"] == "fail" and decision["decided_by"] == "sre-approver"
    # Nothing after the soak was promoted.
    assert all(state["flag"]["rules"][t] == state["images"]["previous"] for t in ("ap-north", "eu-fr2"))
