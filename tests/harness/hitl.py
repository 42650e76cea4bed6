"""Play the approver: answer Airflow's pending Human-in-the-loop requests as a person would.

``dag.test()`` parks an ApprovalOperator in ``awaiting_input`` until a response arrives from
outside. This records the response the way the HITL REST endpoint does (the response on the
``hitl_detail`` row, then the event that resumes the task), in the same metadata DB.

It answers as ``sre-approver`` (an assigned approver, not the identity that triggered the run,
which ``dag.test`` names ``dag_test``), and like the REST endpoint it refuses to answer as a user
who is not among a request's assigned users: such attempts are listed in ``refused``. A request
that does not offer the option (a drift question: Overwrite / Skip target / Stop) is left
pending unless ``drift`` names the answer to give.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

APPROVER = {"id": "sre-approver", "name": "sre-approver"}


def _allowed(detail, user: dict) -> bool:
    assigned = detail.assigned_users or []
    return not assigned or user["id"] in {u.get("id") for u in assigned}


def answer_pending(option: str = "Approve", user: dict | None = None, *, drift: str | None = None,
                   refused: list | None = None) -> list[str]:
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import handle_event_submit
    from airflow.triggers.base import TriggerEvent
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    user = dict(user or APPROVER)
    answered = []
    with create_session() as session:
        for detail in session.scalars(select(HITLDetail).where(HITLDetail.responded_at.is_(None))).all():
            ti = session.get(TaskInstance, detail.ti_id)
            # Only a parked task: our approval defers first (the change board), and dag.test() can leave it
            # DEFERRED in the DB while the resumed execute() writes the request; an answer then is
            # overwritten by the park and the run waits forever (seen in CI).
            if ti is None or ti.state != TaskInstanceState.AWAITING_INPUT:
                continue
            choice = option if option in (detail.options or []) else (
                drift if drift in (detail.options or []) else None)
            if choice is None:
                continue
            if not _allowed(detail, user):
                if refused is not None and ti.task_id not in refused:
                    refused.append(ti.task_id)
                continue
            detail.responded_by = user
            detail.responded_at = datetime.now(UTC)
            detail.chosen_options = [choice]
            detail.params_input = {}
            session.add(detail)
            handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti, session=session)
            answered.append(ti.task_id)
    return answered


class Approver(threading.Thread):
    """Answer every pending request with ``option`` (as ``user``) until stopped."""

    def __init__(self, option: str = "Approve", interval: float = 0.5, *, user: dict | None = None,
                 drift: str | None = None):
        super().__init__(daemon=True, name="hitl-approver")
        self.option = option
        self.interval = interval
        self.user = dict(user or APPROVER)
        self.drift = drift
        self.answered: list[str] = []
        self.refused: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.answered += answer_pending(self.option, self.user, drift=self.drift, refused=self.refused)
            except Exception as exc:  # the DB may be busy for a moment (SQLite); try again
                print(f"[approver] retrying after {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop_event.set()
