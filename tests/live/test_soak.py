"""Issue 9, invariants 1, 2 and 5: what the soak may and may not do to ap-south and the rest of prod.

* a failed soak rolled back, then the README's recovery step (Clear ``canary_soak.soak_gate``):
  remaining prod is never promoted while ap-south serves the previous build;
* a PagerDuty outage shorter than ``gates.inconclusive_timeout`` does not restore a healthy canary;
* a newer build takes over during the soak and the canary then fails: ap-south is restored (the
  newer build does not own it yet) and the run is not green;
* an outage past ``gates.inconclusive_timeout`` asks a person, and their "Roll back" restores ap-south.
"""

from __future__ import annotations

import time

import pytest

from tests.harness.operator_api import ApiError
from tests.harness.stack import wait_for
from tests.live.common import (
    REMAINING_PROD,
    ROLLBACK,
    SOAK,
    bake_seconds,
    plan_json,
    plan_seconds,
    promotions,
    slack_texts,
)

NEWER_BUILD = "999-9999-999-20991231"
#: Longer than the stack plan's soak timeout (60 s), shorter than its gates.inconclusive_timeout (>= 120 s).
OUTAGE_SECONDS = 75
#: The stack plan's gates.inconclusive_timeout.
INCONCLUSIVE_SECONDS = plan_seconds(plan_json()["gates"]["inconclusive_timeout"])


def _serves(state: dict, target: str, which: str) -> bool:
    return state["flag"]["rules"][target] == state["images"][which]


def _mark_failed(live, run_id: str) -> None:
    """The operator marks the soak failed, and again if the mark did not hold: Airflow answers 200 and then
    loses a mark made as the soak's trigger fires (the triggerer sets the task back to scheduled; seen
    once, 2026-11-26). An SRE who sees the soak still deferred marks it again."""
    for _ in range(5):
        status, body = live.admin.mark(run_id, SOAK, "failed", note="monitoring down: soak failed")
        assert 200 <= status < 300, (status, body)
        time.sleep(3)
        state = live.admin.task_state(run_id, SOAK)
        if state == "failed":
            return
        assert state != "success", "the soak passed although PagerDuty could not be read"
    raise AssertionError(f"the soak did not stay failed after 5 marks (it is {state})")


def _good_canary_reloads(live, since: str) -> int:
    """Succeeded autorecovery reloads of ap-south with the new prod image since ``since``."""
    state = live.sandbox.state(autorecovery=True)
    new = state["images"]["new"]["prod"]
    return sum(1 for r in state["reloads"]
               if r.get("region") == "ap-south" and r.get("kind") == "autorecovery" and r["time"] >= since
               and (r.get("status") or r.get("result")) == "succeeded" and str(r.get("image_id")) == new)


def test_clear_after_a_rollback_never_promotes_past_a_restored_canary(live):
    """The issue's path: the soak cannot judge (PagerDuty unreadable) while good reloads pile up, the soak
    fails and the canary is rolled back, PagerDuty comes back, then the operator follows the README:
    Clear the failed soak. Reloads from before the rollback must not count.

    Without the sandbox's ``pagerduty_5xx`` the soak is kept from judging by stopping the triggerer
    (its trigger cannot fire) instead; either way the operator then marks the soak failed if it has not
    failed by itself.
    """
    run_id = live.start()
    state = live.drive(run_id, lambda state, tis: promotions(state, "ap-south"), timeout=bake_seconds() + 240,
                       interval=0.5, what="ap-south promoted")
    promoted_at = promotions(state, "ap-south")[0]["time"]
    live.admin.wait_task(run_id, SOAK, {"deferred", "running", "failed"}, timeout=60, interval=0.5)
    pagerduty_down = live.sandbox.try_faults("pagerduty_5xx")
    if not pagerduty_down:
        live.stack.stop_component("triggerer", hard=True)
    try:
        wait_for(lambda: _good_canary_reloads(live, promoted_at) >= 15, timeout=90, interval=1,
                 what="15 good autorecovery reloads on the canary")
        soak = live.admin.task_state(run_id, SOAK)
        assert soak != "success", "the soak passed although PagerDuty could not be read"
        if soak != "failed":
            _mark_failed(live, run_id)
    finally:
        if not pagerduty_down:
            live.stack.start_component("triggerer")

    def rolled_back(state, tis):
        return _serves(state, "ap-south", "previous") and tis.get(ROLLBACK) in ("success", "failed")

    live.drive(run_id, rolled_back, timeout=150, what="the canary rolled back")
    live.sandbox.clear_faults()  # PagerDuty answers again
    # "What happens when something fails": clear the failed task
    status, body = live.admin.clear(run_id, [SOAK], include_downstream=True)
    assert 200 <= status < 300, (status, body)
    cleared = time.monotonic()

    def promoted_remaining(state, tis):
        return any(promotions(state, t) for t in REMAINING_PROD) or time.monotonic() - cleared > 75

    state = live.drive(run_id, promoted_remaining, timeout=120, what="75 s after the clear")
    moved = sorted(t for t in REMAINING_PROD if promotions(state, t))
    assert not moved, f"after the clear, {moved} were promoted while ap-south serves the previous build"
    assert _serves(state, "ap-south", "previous")
    assert all(_serves(state, t, "previous") for t in REMAINING_PROD)


def test_a_pagerduty_outage_shorter_than_the_inconclusive_timeout_keeps_a_healthy_canary(live):
    def probe():  # fail fast, before a whole rollout, when the sandbox lacks the fault
        try:
            live.sandbox.faults("pagerduty_5xx")
        except ApiError as exc:
            pytest.fail(f"the sandbox cannot make PagerDuty unreadable (SPEC: fault pagerduty_5xx): {exc}")
        live.sandbox.clear_faults()

    run_id = live.start(before_trigger=probe)
    live.drive(run_id, lambda state, tis: promotions(state, "ap-south"), timeout=bake_seconds() + 240,
               what="ap-south promoted")
    live.sandbox.faults("pagerduty_5xx")
    started = time.monotonic()
    def outage_over(state, tis):
        live.sandbox.faults("pagerduty_5xx")  # re-armed every poll: one outage, whether the fault counts calls
        return time.monotonic() - started > OUTAGE_SECONDS or _serves(state, "ap-south", "previous")

    try:
        state = live.drive(run_id, outage_over, timeout=OUTAGE_SECONDS + 60,
                           what=f"a {OUTAGE_SECONDS}s PagerDuty outage")
    finally:
        live.sandbox.clear_faults()
    assert _serves(state, "ap-south", "new"), f"ap-south restored during a {OUTAGE_SECONDS}s monitoring outage"

    def decided(state, tis):
        return tis.get(SOAK) in ("success", "failed") or _serves(state, "ap-south", "previous")

    state = live.drive(run_id, decided, timeout=150, what="the soak to decide once PagerDuty answers again")
    restored = [p for p in promotions(state, "ap-south") if p["image_map"] == state["images"]["previous"]]
    assert not restored, f"a healthy canary was rolled back: {restored}"
    assert _serves(state, "ap-south", "new")
    assert live.admin.task_state(run_id, SOAK) == "success"


def test_an_outage_past_the_inconclusive_timeout_asks_and_roll_back_restores_the_canary(live):
    """PagerDuty stays unreadable past ``gates.inconclusive_timeout``: nothing is restored until a person
    chooses; the plan's approver answers "Roll back" over the REST API, and the rollback restores ap-south.
    The triggering user cannot make that choice."""
    run_id = live.start()
    live.drive(run_id, lambda state, tis: promotions(state, "ap-south"), timeout=bake_seconds() + 240,
               what="ap-south promoted")
    try:
        def asked(state, tis):
            live.sandbox.faults("pagerduty_5xx")  # re-armed every poll: one long outage
            return _serves(state, "ap-south", "previous") or any(
                d["task_instance"]["task_id"] == SOAK for d in live.approver.pending_hitl(run_id))

        state = live.drive(run_id, asked, timeout=INCONCLUSIVE_SECONDS + 120, what="the soak to ask a person")
        assert _serves(state, "ap-south", "new"), "ap-south restored before anyone chose to roll back"
        detail = next(d for d in live.approver.pending_hitl(run_id) if d["task_instance"]["task_id"] == SOAK)
        assert sorted(detail["options"]) == ["Keep waiting", "Roll back"], detail["options"]
        live.wait_settled(run_id, detail)
        status, _body = live.jenkins.answer_hitl(run_id, SOAK, "Roll back")
        assert status == 403, f"the triggering user chose for the soak ({status})"
        status, body = live.approver.answer_hitl(run_id, SOAK, "Roll back")
        assert 200 <= status < 300, (status, body)

        def rolled_back(state, tis):
            return _serves(state, "ap-south", "previous") and tis.get(ROLLBACK) in ("success", "failed")

        state = live.drive(run_id, rolled_back, timeout=150, what="the canary rolled back")
    finally:
        live.sandbox.clear_faults()
    assert live.admin.task_state(run_id, SOAK) == "failed"
    assert live.admin.task_state(run_id, ROLLBACK) == "success"
    assert not any(promotions(state, t) for t in REMAINING_PROD)
    texts = slack_texts(state)
    assert any(t.startswith("Decision needed: ") and "ap-south" in t for t in texts), texts
    assert any("sre-approver chose Roll back" in t for t in texts), texts


def test_a_superseded_rollout_still_restores_its_failed_canary(live):
    def faults():
        # slow autorecovery: the canary fails some 15 s into the soak, after the newer build took over
        live.sandbox.faults("autorecovery_failed_alert:ap-south", "autorecovery_slow:ap-south")

    run_id = live.start(before_trigger=faults)
    live.drive(run_id, lambda state, tis: promotions(state, "ap-south"), timeout=bake_seconds() + 240,
               interval=0.5, what="ap-south promoted")
    live.admin.set_variable("image_rollout_active_build", NEWER_BUILD, "a newer build's rollout took over")
    final = live.admin.wait_run(run_id, timeout=240)
    state = live.sandbox.state()
    assert _serves(state, "ap-south", "previous"), (
        f"ap-south left on the failing build {state['flag'].get('rule_builds', {}).get('ap-south')} (run {final})")
    assert final != "success", "a run whose canary failed ended success"
    assert not any(promotions(state, t) for t in REMAINING_PROD)
    # a distinct, labelled end (item 8), never a plain failure or success
    assert live.admin.task_state(run_id, "rollout_end.superseded") == "failed"
    assert any(m["text"].startswith("SUPERSEDED") for m in state["slack"]), [m["text"][:80] for m in state["slack"]]
