"""Preconditions from the systems of record, end to end with ``dag.test`` (issue 9 items 3, 4, 8).

The live tests (tests/live, real scheduler) drive the REST API; these check the same invariants
in-process against the sandbox.
"""

from __future__ import annotations

from tests.harness.env import sandbox_call
from tests.harness.hitl import Approver
from tests.harness.scenario import reset_airflow_state, run_scenario, set_variable
from tests.scenarios.test_fault_matrix import UP_TO, serving


def _set_rule_by_hand(target: str, image_map: dict) -> None:
    """A person changes the rule in LaunchDarkly before the rollout gets there."""
    from image_rollout.hooks.flags import FlagsHook

    FlagsHook().point_rule(target, image_map, comment="by hand")


def _run_with_drift_answer(base_url: str, answer: str, setup) -> dict:
    sandbox_call(base_url, "/_sandbox/reset", {})
    reset_airflow_state()
    setup(sandbox_call(base_url, "/_sandbox/state")["images"])
    drift = Approver("__none__", drift=answer)
    drift.start()
    try:
        return run_scenario(base_url, faults=[], conf=None, reset=False)
    finally:
        drift.stop()


def test_a_canary_promoted_by_hand_is_drift_not_an_approval(rollout_sandbox):
    result = _run_with_drift_answer(rollout_sandbox, "Stop",
                                    lambda images: _set_rule_by_hand("ap-south", images["new"]))
    state = result["state"]
    assert result["run_state"] != "success"
    assert result["tasks"]["ap_south.file_change_request_ap_south"] == "failed"
    assert result["tasks"].get("ap_south.record_approval_ap_south") != "success"
    assert any("DRIFT on ap-south" in m["text"] for m in state["slack"])
    assert not any("ap-south" in (c.get("message") or "") and "approval" in (c.get("message") or "")
                   for c in state["evidence"]["commits"])
    # Everything before the canary went through; nothing after it did.
    assert all(serving(state)[t] == "new" for t in UP_TO["stage-south"])
    assert all(v == "previous" for t, v in serving(state).items() if t not in UP_TO["ap-south"])


def test_a_rule_changed_by_hand_after_verification_is_not_overwritten(rollout_sandbox):
    """Drift is measured against the baseline read at verification: a person changes prestage-south
    while the rollout runs, and chooses to skip it."""
    import threading
    import time

    def person(images):
        def change():
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                state = sandbox_call(rollout_sandbox, "/_sandbox/state?autorecovery=0")
                if any(p["target"] == "dev-south" for p in state["promotions"]):
                    _set_rule_by_hand("prestage-south", {k: str(int(v) + 7) for k, v in images["previous"].items()})
                    return
                time.sleep(0.2)

        threading.Thread(target=change, daemon=True).start()

    result = _run_with_drift_answer(rollout_sandbox, "Skip target", person)
    state = result["state"]
    assert result["run_state"] != "success"
    assert serving(state)["prestage-south"] == "other"
    assert result["tasks"]["prestage_south.promote_prestage_south"] == "skipped"
    assert any("DRIFT on prestage-south" in m["text"] for m in state["slack"])
    assert all(v == "previous" for t, v in serving(state).items() if t not in UP_TO["prestage-south"])


def test_a_failed_canary_is_restored_even_when_a_newer_build_took_over(rollout_sandbox):
    """Issue 9 item 5: superseded during the soak, then the canary fails: ap-south still serves the
    failing build (the newer build does not own it yet), so the rollback restores it, and the run is
    not green."""
    import threading
    import time

    from image_rollout.operators.base import ACTIVE_BUILD_VARIABLE

    def newer_build_starts():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            state = sandbox_call(rollout_sandbox, "/_sandbox/state?autorecovery=0")
            if any(p["target"] == "ap-south" for p in state["promotions"]):
                set_variable(ACTIVE_BUILD_VARIABLE, "999-9999-999-20991231")
                # the canary fails only now, after the newer build took over (armed earlier, it could
                # fail before this thread set the Variable on a loaded machine)
                sandbox_call(rollout_sandbox, "/_sandbox/faults", {"faults": ["autorecovery_failed_alert:ap-south"]})
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=newer_build_starts, daemon=True)
    watcher.start()
    # slow autorecovery: the soak lasts long enough for the incident the watcher arms
    result = run_scenario(rollout_sandbox, faults=["autorecovery_slow:ap-south"], conf=None)
    watcher.join(timeout=5)
    state = result["state"]
    assert result["run_state"] == "failed", result["tasks"]
    assert serving(state)["ap-south"] == "previous"
    assert result["tasks"]["rollout_end.rollback"] == "success"
    assert result["xcoms"]["rollout_end.rollback:return_value"]["superseded_by"] == "999-9999-999-20991231"
    assert result["tasks"]["rollout_end.superseded"] == "failed"
    assert any("ROLLBACK" in m["text"] and "Restored: ap-south" in m["text"] for m in state["slack"])
    assert all(serving(state)[t] == "previous" for t in serving(state) if t not in UP_TO["stage-south"])


def test_a_bake_marked_success_is_passed_only_by_the_override_which_is_recorded(rollout_sandbox, monkeypatch):
    """Issue 9 item 1: with the bake sensor marked success, only the override Variable takes the canary
    past the bake, and its user and reason go into the evidence and Slack."""
    import json
    from datetime import datetime, timedelta

    from tests.scenarios.test_fault_matrix import TARGETS, not_successful, promotions_per_target

    monkeypatch.setenv("ROLLOUT_PLAN", "stack")  # its 40 s bake ends well after the canary's apply
    build = sandbox_call(rollout_sandbox, "/_sandbox/state")["builds"]["new"]
    override = {"build_name": build, "waits": ["bake"], "reason": "INC0042 hotfix", "by": "sre-lead"}
    try:
        result = run_scenario(rollout_sandbox, faults=[], conf=None, mark_success=r"bake\.wait_bake",
                              variables={"image_rollout_override": json.dumps(override)})
    finally:
        set_variable("image_rollout_override", None)
    state = result["state"]
    at = {p["target"]: datetime.fromisoformat(p["time"].replace("Z", "+00:00")) for p in state["promotions"]}
    assert at["ap-south"] - at["stage-south"] < timedelta(seconds=40), "the canary waited out the bake"
    assert result["xcoms"]["ap_south.apply_change_request_ap_south:override"]["by"] == "sre-lead"
    assert any(m["text"].startswith("OVERRIDE: sre-lead") and "INC0042 hotfix" in m["text"] for m in state["slack"])
    commits = state["evidence"]["commits"]
    assert len(commits) == 4 and "/override-bake-" in commits[-1]["message"], [c["message"] for c in commits]
    assert "### Override" in commits[-1]["content"]
    assert "sre-lead overrode the bake wait" in commits[-1]["content"] and "INC0042 hotfix" in commits[-1]["content"]
    assert result["run_state"] == "success", not_successful(result)
    assert set(serving(state).values()) == {"new"}
    assert promotions_per_target(state) == {t: 1 for t in TARGETS}
