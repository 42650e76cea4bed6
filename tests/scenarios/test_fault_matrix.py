"""The fault matrix: every sandbox fault, alone and in the combinations that matter, through a whole
compressed rollout (``dag.test`` against the sandbox). Each case ends either with every target on
the new image and exactly one promotion per target, or stopped safely (README.md, "What happens
when something fails").

The whole matrix runs under both LaunchDarkly configurations (the module-scoped ``ld`` fixture, so
pytest runs every case of one configuration, then every case of the other): approvals not required,
and approvals required with ``canReviewOwnRequest: false, minNumApprovals: 1``. Every run shares one
sandbox and one Airflow database (``rollout_sandbox``), and the matrix's timing cuts the change
board's delay and Jenkins' queue wait, which only add wall time here.
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
REQUIRED_SETTINGS = {"required": True, "canReviewOwnRequest": False, "minNumApprovals": 1}
#: name -> the /_sandbox/reset body of that LaunchDarkly configuration.
LD_CONFIGS = {
    "approvals-optional": {},
    "approvals-required": {"launchdarkly": {"approvalSettings": REQUIRED_SETTINGS}},
}
#: Sandbox timing for the matrix: the change board decides, a queued build starts, a rebuild and a reload
#: finish sooner than the seeded defaults (every wait the plan polls for stays one poll or less); the
#: autorecovery and report clocks, which the soak and adoption gates count, stay as seeded.
MATRIX_TIMING = {"approval_delay_seconds": 0.3, "queue_seconds": 0.2, "rebuild_seconds": 0.5, "reload_seconds": 0.5}


@pytest.fixture(scope="module", params=list(LD_CONFIGS))
def ld(request) -> str:
    return request.param


def run(base_url: str, ld: str, faults: list[str], **kwargs) -> dict:
    """One rollout under LaunchDarkly configuration ``ld`` (a fresh sandbox and Airflow claim)."""
    result = run_scenario(base_url, faults=faults, conf=None, reset={**LD_CONFIGS[ld], "timing": MATRIX_TIMING},
                          **kwargs)
    settings = result["state"]["launchdarkly"]["approvalSettings"]
    assert settings["required"] is (ld == "approvals-required"), settings
    return result


def required(state) -> bool:
    return state["launchdarkly"]["approvalSettings"]["required"]


def trains_per_target(state) -> collections.Counter:
    """Approval requests ("trains") per target they move, leaving out those the requester deleted."""
    counts: collections.Counter = collections.Counter()
    for request in state["approval_requests"]:
        if not request.get("deleted"):
            counts.update(request["targets"])
    return counts


def assert_common(state) -> None:
    """What holds in every outcome: no evidence written twice; under required approvals no direct write."""
    contents = [c["content"] for c in state["evidence"]["commits"]]
    assert len(set(contents)) == len(contents), "two evidence commits with the same content"
    if required(state):
        direct = [p["target"] for p in state["promotions"] if not p["request_id"]]
        assert direct == [], f"rules written without an approval request under required approvals: {direct}"
    promoted = promotions_per_target(state)
    trains = trains_per_target(state)
    extra = {t: trains[t] - promoted.get(t, 0) for t in trains if trains[t] > promoted.get(t, 0)}
    assert sum(extra.values()) <= 1, f"trains filed and never applied: {extra}"


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
    trains = trains_per_target(state)
    assert max(trains.values()) == 1, f"a change request was filed twice: {trains}"
    if required(state):
        assert trains == {t: 1 for t in TARGETS}, f"every promotion needs exactly one train: {trains}"
    assert_common(state)


def assert_stopped(result, new: list[str], *, rolled_back: list[str] = (), rollback_record: bool = False):
    """Stopped safely: exactly ``new`` serve the new image, ``rolled_back`` were restored, nothing else moved."""
    state = result["state"]
    assert result["run_state"] in ("failed", "success"), result
    assert_common(state)
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
        assert any("ROLLBACK" in m and "Left alone" in m for m in escalations(state))
        for target in new:  # every target it did not restore is named too, with the reason
            assert f"{target} left alone:" in text
        if len(state["evidence"]["commits"]) == 1:  # the file was first created by the rollback
            assert "All manual checks and tests have passed" not in text, text[:400]


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
def test_rollout_reaches_every_target_once(rollout_sandbox, ld, faults):
    result = run(rollout_sandbox, ld, faults)
    assert_all_new(result)
    state = result["state"]
    texts = [m["text"] for m in state["slack"]]
    assert any("started" in t for t in texts) and any("complete" in t for t in texts)
    assert any("Approval needed" in t for t in escalations(state))
    if "jenkins_build_timeout" in faults:
        assert "/immutable_image/435/console" in state["evidence"]["commits"][0]["content"]
        assert any("rebuilding" in t for t in texts)


def test_slack_outage_never_fails_the_rollout(rollout_sandbox, ld):
    result = run(rollout_sandbox, ld, ["slack_down"])
    assert_all_new(result)
    assert result["state"]["slack"] == []


def test_failed_build_stops_before_anything_changes(rollout_sandbox, ld):
    result = run(rollout_sandbox, ld, ["jenkins_build_failed"])
    assert_stopped(result, new=[])
    assert result["tasks"]["build_verification.verify_build"] == "failed"
    assert result["run_state"] == "failed"  # never green, and no second alarm from the rollback
    assert result["tasks"]["rollout_end.rollback"] != "failed"
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
def test_failed_gate_rolls_back_what_it_does_not_vouch_for(rollout_sandbox, ld, faults, new, rolled_back):
    result = run(rollout_sandbox, ld, faults)
    assert_stopped(result, new=new, rolled_back=rolled_back, rollback_record="slack_down" not in faults)
    assert result["tasks"]["rollout_end.rollback"] == "success"


def test_soak_that_cannot_reach_its_reload_count_rolls_back_the_canary(rollout_sandbox, ld):
    result = run(rollout_sandbox, ld, ["autorecovery_slow:ap-south"])
    assert_stopped(result, new=UP_TO["stage-south"], rolled_back=["ap-south"], rollback_record=True)


def test_rejected_prod_train_stops_before_the_canary_changes(rollout_sandbox, ld):
    result = run(rollout_sandbox, ld, ["train_rejected"])
    assert_stopped(result, new=UP_TO["stage-south"])
    assert any("declined" in t for t in escalations(result["state"]))


def test_rejection_in_airflow_stops_and_withdraws_the_train(rollout_sandbox, ld):
    result = run(rollout_sandbox, ld, [], approve="Reject")
    assert_stopped(result, new=UP_TO["stage-south"])
    ap_south = [r for r in result["state"]["approval_requests"] if "ap-south" in r["targets"]]
    # The requester never reviews its own train: it deletes it (LaunchDarkly's DELETE of a pending request).
    assert [r["deleted"] for r in ap_south] == [True]
    assert all(r["memberId"] != "sandbox-rollout" for r in ap_south[0]["allReviews"])
    assert any("rejected in Airflow" in t and "withdrawn" in t for t in escalations(result["state"]))
    # a decision is final: the approval task (retries for the machinery) does not ask again
    asked = [t for t in escalations(result["state"]) if t.startswith("Approval needed") and "ap-south" in t]
    assert len(asked) == 1, asked
    assert result["tasks"]["ap_south.approve_ap_south"] == "failed"


@pytest.mark.parametrize("faults", [
    ["flags_lost_response"],
    ["github_lost_response"],
    ["jenkins_build_timeout", "jenkins_lost_response"],
], ids=lambda f: ",".join(f))
def test_lost_answer_is_not_a_second_write(rollout_sandbox, ld, faults):
    """The write is carried out and its answer lost: the retry must find it, not write again."""
    result = run(rollout_sandbox, ld, faults)
    assert_all_new(result)
    state = result["state"]
    lost = [f for f in faults if f.endswith("_lost_response")]
    assert not set(lost) & set(state["faults"]), "the lost-response fault never fired"
    assert all(f in state["faults_applied"] for f in lost)
    if "jenkins_lost_response" in faults:
        numbers = [b["number"] for b in state["jenkins"]["immutable_image"]]
        assert numbers == [433, 434, 435], f"the rebuild was triggered more than once: {numbers}"
