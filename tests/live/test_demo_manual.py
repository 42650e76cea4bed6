"""``make demo`` with DEMO_APPROVE=manual: the demo's own loop (``tests.harness.demo.follow_rollout``) follows
a rollout on the real scheduler and waits for a person; this test is the person, answering the prod start
through the REST API as the assigned approver. The demo must say where to click, keep waiting (with
progress lines) while nobody answers, and finish only after the click, with the run green.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import quote

from tests.harness.demo import follow_rollout
from tests.harness.operator_api import ApiError
from tests.harness.progress import Progress
from tests.harness.stack import DAG_ID, wait_for
from tests.live.common import ANSWER_AFTER, APPROVE, PLAN, asked_for, promotions

#: How long the test leaves the request unanswered: several of the demo's polls and reminders.
UNANSWERED_SECONDS = 12
REMIND_EVERY = 4


def test_manual_approval_waits_for_the_person_and_finishes_after_the_click(live):
    run_id = live.start()
    lines: list[str] = []
    outcome: dict = {}

    def demo():
        try:
            progress = Progress(PLAN, time.monotonic(), out=lines.append)
            outcome["final"], outcome["approvals"] = follow_rollout(
                live.stack, run_id, progress, approve="manual", out=lines.append, remind_every=REMIND_EVERY,
                interval=2)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        outcome["ended_at"] = time.monotonic()

    thread = threading.Thread(target=demo, name="demo-follow", daemon=True)
    thread.start()

    def asked():
        assert thread.is_alive(), f"the demo ended before the approval was asked: {outcome}"
        try:
            return live.approver.pending_hitl(run_id)
        except (OSError, ApiError):  # a busy api-server (2 shared cores): look again
            return None

    [request] = wait_for(asked, timeout=300, interval=2, what="the prod start to be asked")
    assert request["task_instance"]["task_id"] == APPROVE

    # Nobody answers: the demo keeps waiting, says where to click, and that it still waits.
    time.sleep(max(UNANSWERED_SECONDS, ANSWER_AFTER - asked_for(request)))
    assert thread.is_alive(), f"the demo ended without the person's answer: {outcome}\n" + "\n".join(lines)
    assert not promotions(live.sandbox.state(), "ap-south"), "ap-south promoted without the start decision"
    text = "\n".join(lines)
    where = f"{live.stack.base_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/{APPROVE}/required_actions"
    assert where in text, text
    assert f"sre-approver / {live.stack.passwords['sre-approver']}" in text, text
    assert "still waiting for a person to answer" in text, text
    assert "final" not in outcome

    # The person clicks Approve (the Required actions page sends this PATCH).
    status, body = live.approver.answer_hitl(run_id, APPROVE, "Approve")
    assert status == 200, body
    clicked = time.monotonic()

    thread.join(timeout=420)
    assert not thread.is_alive(), "the demo did not finish within 7 minutes of the click:\n" + "\n".join(lines[-20:])
    assert "error" not in outcome, outcome["error"] + "\n" + "\n".join(lines[-20:])
    assert outcome["final"] == "success", "\n".join(lines)
    assert outcome["ended_at"] > clicked
    [answer] = outcome["approvals"].answered
    assert answer["task_id"] == APPROVE and answer["chosen"] == ["Approve"]
    assert answer["responded_by"]["id"] == "sre-approver"
    assert any("Approve by sre-approver" in line and "the rollout goes on" in line for line in lines), lines
    assert promotions(live.sandbox.state(), "ap-south")
