"""Issue 9 on the real scheduler: an operator drives the rollout over the REST API and the sandbox's
final state is the evidence. ``pytest -m live`` (or ``pytest tests/live``) selects them.

Invariant -> test:

* 1 canary precondition (mark success on the bake) -> test_bake_and_approval::test_marked_success_on_the_bake_does_not_promote_the_canary_early
* 1 remaining-prod precondition (clear after a rollback) -> test_soak::test_clear_after_a_rollback_never_promotes_past_a_restored_canary
* 2 inconclusive is not failed (PagerDuty outage) -> test_soak::test_a_pagerduty_outage_shorter_than_the_inconclusive_timeout_keeps_a_healthy_canary,
  and past the timeout a person's "Roll back" restores -> test_soak::test_an_outage_past_the_inconclusive_timeout_asks_and_roll_back_restores_the_canary
* 3 separation of duties -> test_bake_and_approval::test_the_triggering_user_cannot_approve_the_prod_start,
  test_bake_and_approval::test_the_evidence_records_who_decided
* 3/4 a canary promoted by hand is drift -> test_drift::test_a_canary_promoted_by_hand_holds_the_rollout_and_asks
* 5/8 superseded + failed canary -> test_soak::test_a_superseded_rollout_still_restores_its_failed_canary
* 6 strict input -> test_input_and_keys::test_loose_image_ids_fail_verification_before_any_write
* 7 idempotency keys -> test_input_and_keys::test_a_commit_with_the_rollout_message_but_not_its_key_is_not_taken_as_ours
* the prod start rejected, then cleared by an operator -> test_reject::test_a_rejected_prod_start_withdraws_the_train_and_a_clear_cannot_start_the_canary
"""

from __future__ import annotations
