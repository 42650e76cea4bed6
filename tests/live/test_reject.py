"""The prod start rejected on the real scheduler, and then the rejection cleared by an operator.

Runbook: the SRE's go starts the canary. *Reject* stops the rollout before ap-south changes and withdraws
the prod train (LaunchDarkly's DELETE of the pending request). An operator who then clears the approval
task, and whose approver approves whatever is asked, must still not start the canary: the train the go
was for is gone, and LaunchDarkly says so, not the task states. The README's way back (clear the file
task: a new train for the change board) then works.
"""

from __future__ import annotations

import time

from tests.live.common import (
    APPLY_AP_SOUTH,
    APPROVE,
    FILE_AP_SOUTH,
    PATCHING,
    REMAINING_PROD,
    bake_seconds,
    promotions,
    slack_texts,
)

#: After the clear: how long the failed approval may take to say why (a retry would take 5 s, doubling).
AFTER_CLEAR_SECONDS = 90


def _ap_south_requests(state: dict) -> list[dict]:
    return [r for r in state["approval_requests"] if "ap-south" in (r.get("targets") or [])]


def test_a_rejected_prod_start_withdraws_the_train_and_a_clear_cannot_start_the_canary(live):
    run_id = live.start()
    live.drive(run_id, lambda state, tis: bool(live.approver.pending_hitl(run_id)) or promotions(state, "ap-south"),
               timeout=bake_seconds() + 240, approve=False, what="the prod start to be asked")
    detail = live.approver.pending_hitl(run_id)[0]
    assert detail["task_instance"]["task_id"] == APPROVE, detail["task_instance"]
    live.wait_settled(run_id, detail)  # a person reads the request first (see PARKED_SETTLE)
    status, body = live.approver.answer_hitl(run_id, APPROVE, "Reject")
    assert 200 <= status < 300, (status, body)
    live.admin.wait_task(run_id, APPROVE, {"failed"}, timeout=120, interval=0.5)

    rejected = live.sandbox.state()
    assert not promotions(rejected, "ap-south"), "ap-south promoted after the prod start was rejected"
    requests = _ap_south_requests(rejected)
    assert [r.get("deleted") for r in requests] == [True], f"the ap-south train was not withdrawn: {requests}"
    said = [t for t in slack_texts(rejected, PATCHING) if "rejected in Airflow by sre-approver" in t]
    assert said and "withdrawn" in said[0], slack_texts(rejected, PATCHING)

    # The operator clears the rejected approval (downstream too, as the UI does), and the approver approves
    # whatever the rollout asks from then on.
    status, body = live.admin.clear(run_id, [APPROVE])
    assert 200 <= status < 300, (status, body)

    def said_why(state, tis):
        return promotions(state, "ap-south") or any(
            "approve_ap_south" in t and "(try 2)" in t and "no longer exists in LaunchDarkly" in t
            for t in slack_texts(state, PATCHING))

    live.drive(run_id, said_why, timeout=AFTER_CLEAR_SECONDS, what="the cleared approval to fail and say why")
    time.sleep(10)  # anything the clear let through would show now: an approval asked and answered, an apply
    final = live.drive(run_id, lambda state, tis: True, timeout=30)

    assert not promotions(final, "ap-south"), "a cleared rejection started the canary"
    assert final["flag"]["rules"]["ap-south"] == final["images"]["previous"], "ap-south does not serve the previous map"
    for target in REMAINING_PROD:
        assert not promotions(final, target), f"{target} promoted after the prod start was rejected"
    requests = _ap_south_requests(final)
    assert all(r.get("deleted") and r.get("status") != "completed" for r in requests), (
        f"an ap-south train was filed or applied after the rejection: {requests}")
    approve = next(ti for ti in live.admin.task_instances(run_id) if ti["task_id"] == APPROVE)
    # a final failure: the try after the clear, not retried against LaunchDarkly's 404
    assert (approve["state"], approve["try_number"]) == ("failed", 2), approve
    assert live.admin.task_state(run_id, APPLY_AP_SOUTH) != "success"

    # The README's way back: clear the file task, so a new train goes to the change board; once the board
    # approved it, the approver's go starts the canary as on a first run.
    status, body = live.admin.clear(run_id, [FILE_AP_SOUTH])
    assert 200 <= status < 300, (status, body)
    restarted = live.drive(run_id, lambda state, tis: promotions(state, "ap-south"), timeout=240,
                           what="ap-south promoted from a new train")
    trains = _ap_south_requests(restarted)
    withdrawn = [r for r in trains if r.get("deleted")]
    applied = [r for r in trains if not r.get("deleted")]
    assert len(withdrawn) == 1 and withdrawn[0].get("status") != "completed", trains
    assert len(applied) == 1 and applied[0].get("status") == "completed", trains
    assert restarted["flag"]["rules"]["ap-south"] == restarted["images"]["new"]
