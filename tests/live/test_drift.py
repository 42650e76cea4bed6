"""Issue 9, invariants 3 and 4: a canary promoted by hand is drift, not an approval.

While the rollout bakes, a person points ap-south's rule at the new build through the LaunchDarkly
API. The rollout must not take that as approved (no "approved ... by unknown" in the evidence, no
further prod promotion); it holds and asks: "Overwrite", "Skip target" or "Stop".
"""

from __future__ import annotations

from tests.live.common import BAKE, REMAINING_PROD, bake_seconds, promotions

DRIFT_OPTIONS = {"Overwrite", "Skip target", "Stop"}


def test_a_canary_promoted_by_hand_holds_the_rollout_and_asks(live):
    run_id = live.start()
    live.admin.wait_task(run_id, BAKE, {"deferred"}, timeout=240)
    new = live.sandbox.state()["images"]["new"]
    live.sandbox.set_rule("ap-south", new, comment="promoted by hand from the LaunchDarkly UI")
    asked: dict = {}

    def held_or_moved_on(state, tis):
        drift = [d for d in live.approver.pending_hitl(run_id) if DRIFT_OPTIONS & set(d.get("options") or [])]
        if drift:
            asked["detail"] = drift[0]
            return True
        moved = [p for t in REMAINING_PROD for p in promotions(state, t)]
        return bool(moved) or live.admin.run_state(run_id) in ("success", "failed")

    state = live.drive(run_id, held_or_moved_on, timeout=bake_seconds() + 180,
                       what="a drift question on ap-south, or the rollout going past it")
    for commit in state["evidence"]["commits"]:
        assert "by unknown" not in (commit.get("content") or ""), (
            f"evidence commit {commit['sha'][:10]} took the hand-made promotion for an Airflow approval")
    moved = {t: promotions(state, t) for t in REMAINING_PROD if promotions(state, t)}
    assert not moved, f"remaining prod promoted past a canary nobody approved: {sorted(moved)}"
    detail = asked.get("detail")
    assert detail, "the rollout did not hold and ask about the changed ap-south rule"
    assert DRIFT_OPTIONS <= set(detail["options"]), detail["options"]
    # the approver stops the rollout: nothing further is written. A person answers seconds after the
    # question appears (an answer within the same second races Airflow 3.3.2's parking of the task).
    live.wait_settled(run_id, detail)
    status, body = live.approver.answer_hitl(run_id, detail["task_instance"]["task_id"], "Stop",
                                             map_index=detail["task_instance"]["map_index"])
    assert 200 <= status < 300, (status, body)
    final = live.drive(run_id, lambda s, tis: live.admin.run_state(run_id) in ("success", "failed"),
                       timeout=120, approve=False, what="the run to stop")
    assert live.admin.run_state(run_id) != "success"
    assert not [p for t in REMAINING_PROD for p in promotions(final, t)]
