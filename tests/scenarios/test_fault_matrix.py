"""The fault matrix: every sandbox fault, alone and in the combinations that matter, through a whole
compressed rollout (``dag.test`` against the sandbox). Each case ends either with every target on
the new image and exactly one promotion per target, or stopped safely (DESIGN.md section 5).
"""

from __future__ import annotations

import collections

import pytest

from image_rollout.plan import load_plan
from tests.harness.scenario import run_scenario

PLAN = load_plan("sandbox")
TARGETS = [t.target for t in PLAN.targets]
UP_TO = {name: TARGETS[: TARGETS.index(name) + 1] for name in TARGETS}
PATCHING = PLAN.slack.patching_channel


def promotions_per_target(state) -> collections.Counter:
    return collections.Counter(p["target"] for p in state["promotions"])


def serving(state) -> dict[str, str]:
    """target -> "new" / "previous" / "other"."""
    images = state["images"]
    out = {}
    for target, image_map in state["flag"]["rules"].items():
        out[target] = "new" if image_map == images["new"] else "previous" if image_map == images["previous"] else "other"
    return out


def escalations(state) -> list[str]:
    return [m["text"] for m in state["slack"] if m["channel"] == PATCHING]


def not_successful(result) -> dict:
    return {t: s for t, s in result["tasks"].items() if s != "success"}


def assert_all_new(result):
    state = result["state"]
    assert result["run_state"] == "success", not_successful(result)
    assert set(serving(state).values()) == {"new"}, (serving(state), not_successful(result))
    assert promotions_per_target(state) == {t: 1 for t in TARGETS}, "a rule was written more than once"
    commits = state["evidence"]["commits"]
    assert len(commits) == 3, [c["message"] for c in commits]
    first, stage, approval = (c["sha"] for c in commits)
    by_target = {p["target"]: p for p in state["promotions"]}
    assert by_target["stage-dal10-carrier0"]["evidence_sha"] == first
    assert by_target["stage-south"]["evidence_sha"] == stage
    assert by_target["ap-south"]["evidence_sha"] == stage
    assert {by_target[t]["evidence_sha"] for t in UP_TO["eu-fr2"][7:]} == {approval}
    for target in UP_TO["eu-fr2"][4:]:
        cr = by_target[target]["change_request"]
        assert cr["acceptanceTests"]["hashType"] == "Git Commit"
        assert cr["details"] == f"Promoting immutable image build {state['builds']['new']}-prod"
        assert cr["backoutPlan"] == "Rollback to previous version"
        assert cr["securityOnly"] is True
    assert by_target["ap-south"]["change_request"]["previousDeployment"] == by_target["stage-south"]["request_id"]
    requests = collections.Counter(r["integrationConfig"]["target"] for r in state["approval_requests"])
    assert max(requests.values()) == 1, f"a change request was filed twice: {requests}"


def assert_stopped(result, new: list[str], *, rolled_back: list[str] = (), rollback_record: bool = False):
    """Stopped safely: exactly ``new`` serve the new image, ``rolled_back`` were restored, nothing else moved."""
    state = result["state"]
    assert result["run_state"] in ("failed", "success"), result
    now = serving(state)
    assert sorted(t for t, s in now.items() if s == "new") == sorted(new), now
    assert sorted(t for t, s in now.items() if s == "previous") == sorted(set(TARGETS) - set(new))
    counts = promotions_per_target(state)
    for target in TARGETS:
        expected = 1 if target in new else 2 if target in rolled_back else 0
        assert counts.get(target, 0) == expected, (target, counts)
    if rollback_record:
        text = state["evidence"]["commits"][-1]["content"]
        assert "### Rollback" in text
        for target in rolled_back:
            assert f"{target} restored to the previous image map" in text
        assert any("ROLLBACK" in m for m in escalations(state))


ALL_NEW_CASES = [
    [],
    ["jenkins_5xx"],
    ["flags_5xx"],
    ["flags_conflict"],
    ["github_5xx"],
    ["github_conflict"],
    ["jenkins_build_timeout"],
    ["autorecovery_failed_alert:us-east"],  # after the soak: an incident elsewhere stops nothing
    ["flags_5xx", "github_conflict", "jenkins_5xx", "flags_conflict", "github_5xx"],
]


@pytest.mark.parametrize("faults", ALL_NEW_CASES, ids=lambda f: ",".join(f) or "no-faults")
def test_rollout_reaches_every_target_once(rollout_sandbox, faults):
    result = run_scenario(rollout_sandbox, faults=faults, conf=None)
    assert_all_new(result)
    state = result["state"]
    texts = [m["text"] for m in state["slack"]]
    assert any("started" in t for t in texts) and any("complete" in t for t in texts)
    assert any("Approval needed" in t for t in escalations(state))
    if "jenkins_build_timeout" in faults:
        assert "/immutable_image/435/console" in state["evidence"]["commits"][0]["content"]
        assert any("rebuilding" in t for t in texts)


def test_slack_outage_never_fails_the_rollout(rollout_sandbox):
    result = run_scenario(rollout_sandbox, faults=["slack_down"], conf=None)
    assert_all_new(result)
    assert result["state"]["slack"] == []


def test_failed_build_stops_before_anything_changes(rollout_sandbox):
    result = run_scenario(rollout_sandbox, faults=["jenkins_build_failed"], conf=None)
    assert_stopped(result, new=[])
    assert result["tasks"]["build_verification.verify_build"] == "failed"
    assert result["state"]["evidence"]["commits"] == []
    assert any("verify_build" in t for t in escalations(result["state"]))


@pytest.mark.parametrize(
    "faults,new,rolled_back",
    [
        (["reload_fail:dev-sjc04-carrier12"], [], ["dev-sjc04-carrier12"]),
        (["reload_fail:prestage-mon01-carrier1"], ["dev-sjc04-carrier12"], ["dev-south", "prestage-mon01-carrier1"]),
        (["reload_fail:stgiks-dal10-carrier0"], UP_TO["prestage-mon01-carrier1"],
         ["prestage-south", "stage-dal10-carrier0"]),
        (["autorecovery_failed_alert:ap-south"], UP_TO["stage-south"], ["ap-south"]),
        (["reload_fail:dev-sjc04-carrier12", "slack_down", "flags_5xx"], [], ["dev-sjc04-carrier12"]),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, list) and v and ":" in str(v[0]) else None,
)
def test_failed_gate_rolls_back_what_it_does_not_vouch_for(rollout_sandbox, faults, new, rolled_back):
    result = run_scenario(rollout_sandbox, faults=faults, conf=None)
    assert_stopped(result, new=new, rolled_back=rolled_back, rollback_record="slack_down" not in faults)
    assert result["tasks"]["rollout_end.rollback"] == "success"


def test_soak_that_cannot_reach_its_reload_count_rolls_back_the_canary(rollout_sandbox):
    result = run_scenario(rollout_sandbox, faults=["autorecovery_slow:ap-south"], conf=None)
    assert_stopped(result, new=UP_TO["stage-south"], rolled_back=["ap-south"], rollback_record=True)


def test_rejected_prod_train_stops_before_the_canary_changes(rollout_sandbox):
    result = run_scenario(rollout_sandbox, faults=["train_rejected"], conf=None)
    assert_stopped(result, new=UP_TO["stage-south"])
    assert any("declined" in t for t in escalations(result["state"]))


def test_rejection_in_airflow_stops_and_declines_the_train(rollout_sandbox):
    result = run_scenario(rollout_sandbox, faults=[], conf=None, approve="Reject")
    assert_stopped(result, new=UP_TO["stage-south"])
    ap_south = [r for r in result["state"]["approval_requests"] if r["integrationConfig"]["target"] == "ap-south"]
    assert [r["reviewStatus"] for r in ap_south] == ["declined"]
    assert any("rejected in Airflow" in t for t in escalations(result["state"]))
