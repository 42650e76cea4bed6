"""``make demo``'s own logic without a stack: who answers the prod start (DEMO_APPROVE), what it prints while
it waits for a person, and its summary (reloads split by kind, install time apart from the rollout).
The same code on the real scheduler: tests/live/test_demo_manual.py."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from tests.harness import demo
from tests.harness.progress import Progress

RUN = "rollout__533-1251-880-20211101"
TASK = "ap_south.approve_ap_south"


class FakeStack:
    """The parts of ``AirflowStack`` the approval loop uses; HITL details as the REST client returns them."""

    base_url = "http://localhost:8080"
    passwords = {"admin": "admin", "sre-approver": "pw-123"}

    def __init__(self):
        self.details: list = []
        self.approved: list = []

    def rest(self, user):
        return NS(task_instances=NS(get_hitl_details=lambda dag_id, run_id: NS(hitl_details=list(self.details))))

    def pending_approvals(self, run_id, user):
        return [d for d in self.details if not d.response_received]

    def approve_pending(self, run_id, *, option, user):
        self.approved.append((option, user))
        return [{"task_id": TASK, "chosen": [option], "responded_by": {"id": user, "name": user}}]


def detail(*, answered: bool = False, state: str = "awaiting_input"):
    return NS(task_instance=NS(task_id=TASK, map_index=-1, state=state), subject="Approve the prod change",
              assigned_users=[{"id": "sre-approver", "name": "sre-approver"}], response_received=answered,
              chosen_options=["Approve"] if answered else None, responded_at=None,
              responded_by_user=NS(id="sre-approver", name="sre-approver") if answered else None)


def ti(state: str):
    return NS(task_id=TASK, map_index=-1, state=state, start_date=None, end_date=None)


def test_manual_mode_says_where_to_click_reminds_and_reports_the_answer():
    stack, lines, now = FakeStack(), [], [100.0]
    approvals = demo.Approvals(stack, RUN, "manual", Progress("sandbox", 0.0, out=lines.append), out=lines.append,
                               remind_every=60, clock=lambda: now[0])
    stack.details = [detail()]
    approvals([ti("awaiting_input")])
    text = "\n".join(lines)
    assert f"http://localhost:8080/dags/immutable_image_rollout/runs/{RUN}/tasks/{TASK}/required_actions" in text
    assert "sre-approver / pw-123" in text and "no time limit" in text
    now[0] += 30
    approvals([ti("awaiting_input")])
    assert not any("still waiting" in line for line in lines)  # not before a minute
    now[0] += 31
    approvals([ti("awaiting_input")])
    assert sum("still waiting" in line for line in lines) == 1 and "1m01s so far" in lines[-1]
    assert stack.approved == [] and approvals.answered == []  # the demo never answers for the person
    stack.details = [detail(answered=True, state="running")]
    approvals([ti("running")])
    assert [a["responded_by"]["id"] for a in approvals.answered] == ["sre-approver"]
    assert "Approve by sre-approver" in lines[-1] and "the rollout goes on" in lines[-1]
    approvals([ti("success")])
    assert len(approvals.answered) == 1


def test_auto_mode_answers_as_the_approver():
    stack, lines = FakeStack(), []
    stack.details = [detail()]
    approvals = demo.Approvals(stack, RUN, "auto", Progress("sandbox", 0.0, out=lines.append), out=lines.append)
    approvals([ti("awaiting_input")])
    assert stack.approved == [("Approve", "sre-approver")] and len(approvals.answered) == 1


def test_an_unknown_demo_approve_is_refused_before_anything_starts(monkeypatch, capsys):
    monkeypatch.setenv("DEMO_APPROVE", "later")
    monkeypatch.setattr(demo, "run_demo", lambda args: pytest.fail("the demo started"))
    with pytest.raises(SystemExit) as exit_:
        demo.main([])
    assert exit_.value.code == 2 and "DEMO_APPROVE must be one of auto, manual, not 'later'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="DEMO_APPROVE"):
        demo.Approvals(FakeStack(), RUN, "later", Progress("sandbox", 0.0))


def test_summary_splits_reloads_by_kind_and_times_by_phase():
    state = {"reloads": [{"kind": "requested"}] * 9 + [{"kind": "autorecovery"}] * 3680}
    assert demo.reload_counts(state) == (9, 3680)
    assert demo.install_seconds(1000.0, {"DEMO_MAKE_STARTED": "958.5"}) == 41.5
    assert demo.install_seconds(1000.0, {}) is None
    line = demo.wall_times(41.5, 35, 300, 340)
    assert "install (make venv" in line and "42s" in line and "Airflow start" in line and "35s" in line
    assert "rollout 5m00s" in line and line.endswith("total 6m22s")
    assert "not measured" in demo.wall_times(None, 35, 300, 340)


def test_summary_names_what_each_gate_counted():
    detail = {"gates": [
        {"kind": "reloads", "carrier": "dev-sjc04-carrier12", "succeeded_with_new_image": 3, "required": 3},
        {"kind": "bake"},
        {"kind": "soak", "autorecovery_reloads": 11, "required_reloads": 10},
        {"kind": "approval"},
    ]}
    assert demo.gate_counts(detail) == ["dev-sjc04-carrier12 3/3", "canary soak 11/10 autorecovery"]
    assert demo.gate_counts(None) == []
    lines = []
    state = {"flag": {"rules": {}}, "evidence": {}, "images": {}, "builds": {},
             "reloads": [{"kind": "requested"}] * 2 + [{"kind": "autorecovery"}] * 40}
    demo.print_outcome(state, RUN, "http://localhost:8080", out=lines.append, gates=demo.gate_counts(detail))
    text = "\n".join(lines)
    assert "reloads the gates counted (with the new image, of required): dev-sjc04-carrier12 3/3; canary soak" in text
    assert "requested from chlorine (when autorecovery was too slow): 2" in text
    assert "background autorecovery reloads in the sandbox (every carrier, all along; not the gates' count): 40" in text
