"""One hook instance per task run: reused by every step of the run, never carried into the next try,
the next resumption or the next test (each has its own task instance)."""

from __future__ import annotations

from types import SimpleNamespace

from image_rollout.operators import base
from image_rollout.operators.promote import PromoteTargetOperator


def test_one_hook_per_task_run_and_a_new_one_for_the_next(monkeypatch):
    made = []
    monkeypatch.setattr(base, "flags_hook", lambda: made.append(object()) or made[-1])
    op = PromoteTargetOperator(task_id="promote_dev_south", target="dev-south")
    first = {"ti": SimpleNamespace(), "run_id": "r"}
    assert op.flags(first) is op.flags(first)
    assert len(made) == 1
    retry = {"ti": SimpleNamespace(), "run_id": "r"}  # a new try or a resumption: a new task instance
    assert op.flags(retry) is not made[0]
    assert len(made) == 2


def test_the_build_record_is_pulled_once_per_task_run():
    pulls = []

    def xcom_pull(**kwargs):
        pulls.append(kwargs)
        return {"name": "1-2-3-20260101", "images": {"dev": "1"}}

    op = PromoteTargetOperator(task_id="promote_dev_south", target="dev-south")
    context = {"ti": SimpleNamespace(xcom_pull=xcom_pull), "run_id": "r"}
    assert op.build_record(context) is op.build_record(context)
    op.build_record({"ti": SimpleNamespace(xcom_pull=xcom_pull), "run_id": "r"})
    assert len(pulls) == 2
