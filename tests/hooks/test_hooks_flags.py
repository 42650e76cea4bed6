"""FlagsHook against the sandbox's LaunchDarkly: rules, idempotent writes, change requests."""

from __future__ import annotations

import pytest

from image_rollout.hooks._http import ExternalSystemError
from image_rollout.hooks.flags import FlagsHook

NEW_BUILD = "533-1251-880-20211101"
PREVIOUS_MAP = {"dev": "8495980", "prod": "8496814", "prodfr2": "8496850", "stage": "8496586"}
NEW_MAP = {"dev": "8935101", "prod": "8935154", "prodfr2": "8935160", "stage": "8935122"}
TARGETS = [
    "dev-sjc04-carrier12",
    "dev-south",
    "prestage-mon01-carrier1",
    "prestage-south",
    "stage-dal10-carrier0",
    "stage-south",
    "ap-south",
    "ap-north",
    "eu-central",
    "uk-south",
    "us-east",
    "us-south",
    "br-sao",
    "ca-tor",
    "jp-osa",
    "eu-fr2",
]


@pytest.fixture
def flags(sandbox) -> FlagsHook:
    return FlagsHook()


def fields_for(target: str, build: str = NEW_BUILD) -> dict:
    link = f"https://github.example/alchemy-conductors/team/blob/{'a' * 40}/evidence.md"
    return {
        "acceptanceTests": {"link": link, "hashValue": "a" * 40, "hashType": "Git Commit"},
        "buildSecurityTests": {"link": link, "hashValue": "a" * 40, "hashType": "Git Commit"},
        "securityOnly": True,
        "securityImpact": "https://github.example/concept-doc-kernel-patching.md",
        "details": f"Promoting immutable image build {build}-prod",
        "backoutPlan": "Rollback to previous version",
        "previousDeployment": None,
        "target": target,
        "build": build,
    }


def test_rule_values_after_reset(flags):
    flag = flags.get_flag()
    assert flag["key"] == "worker-image"
    assert flags.rule_values() == {target: PREVIOUS_MAP for target in TARGETS}
    assert flags.rule_value("eu-fr2") == PREVIOUS_MAP


def test_unknown_target_fails_closed(flags):
    with pytest.raises(ExternalSystemError, match="no rule for target 'mars-north'"):
        flags.rule_value("mars-north")


def test_point_rule_writes_once(flags, sandbox):
    assert flags.point_rule("dev-south", NEW_MAP, "Promoting immutable image build 533 to dev-south") is True
    state = sandbox.state()
    assert state["flag"]["rules"]["dev-south"] == NEW_MAP
    assert state["flag"]["rules"]["dev-sjc04-carrier12"] == PREVIOUS_MAP
    assert [p["target"] for p in state["promotions"]] == ["dev-south"]
    patches = sandbox.calls("flags PATCH")

    assert flags.point_rule("dev-south", NEW_MAP, "again") is False
    assert sandbox.calls("flags PATCH") == patches, "no write when the rule already serves the map"
    assert len(sandbox.state()["promotions"]) == 1
    assert flags.rule_value("dev-south") == NEW_MAP


def test_point_rule_is_a_no_op_when_already_serving(flags, sandbox):
    assert flags.point_rule("ap-south", dict(PREVIOUS_MAP), "nothing to do") is False
    assert sandbox.calls("flags PATCH") == 0
    assert sandbox.state()["promotions"] == []


def test_point_rule_adds_a_missing_variation(flags, sandbox):
    odd_map = {"dev": "1", "prod": "2", "prodfr2": "3", "stage": "4"}
    before = len(flags.get_flag()["variations"])
    assert flags.point_rule("dev-sjc04-carrier12", odd_map, "test image", variation_name="test-build") is True
    flag = flags.get_flag()
    assert len(flag["variations"]) == before + 1
    assert any(v["value"] == odd_map and v.get("name") == "test-build" for v in flag["variations"])
    assert sandbox.state()["flag"]["rules"]["dev-sjc04-carrier12"] == odd_map


def test_point_rule_recovers_from_flags_5xx(flags, sandbox):
    sandbox.faults("flags_5xx")
    assert flags.point_rule("dev-sjc04-carrier12", NEW_MAP, "through 503s") is True
    assert sandbox.state()["flag"]["rules"]["dev-sjc04-carrier12"] == NEW_MAP


def test_point_rule_recovers_from_conflicts(flags, sandbox):
    sandbox.faults("flags_conflict")
    assert flags.point_rule("prestage-south", NEW_MAP, "through 409s") is True
    state = sandbox.state()
    assert state["flag"]["rules"]["prestage-south"] == NEW_MAP
    assert [p["target"] for p in state["promotions"]] == ["prestage-south"]


def test_stage_change_request_lifecycle(flags, sandbox):
    target = "stage-dal10-carrier0"
    assert flags.find_change_request(target, NEW_BUILD, NEW_MAP) is None
    request = flags.create_change_request(
        [target], NEW_MAP, fields_for(target), f"Promote immutable image build {NEW_BUILD} to {target}"
    )
    assert f"Rollout-Key: immutable-image/{NEW_BUILD}/{target}" in request["description"].splitlines()
    assert request["reviewStatus"] == "approved", "stage trains are approved at creation"
    assert request["status"] == "pending"
    assert sandbox.state()["flag"]["rules"][target] == PREVIOUS_MAP, "nothing changes before apply"

    again = flags.create_change_request([target], NEW_MAP, fields_for(target), "retried task")
    assert again["_id"] == request["_id"], "a second request for the same promotion is never filed"
    assert len(flags.list_change_requests()) == 1
    assert flags.find_change_request(target, NEW_BUILD, NEW_MAP)["_id"] == request["_id"]
    assert flags.find_change_request(target, "other-build", NEW_MAP) is None

    applied = flags.apply_change_request(request["_id"], "start")
    assert applied["status"] == "completed"
    assert flags.apply_change_request(request["_id"], "start again")["status"] == "completed"
    state = sandbox.state()
    assert state["flag"]["rules"][target] == NEW_MAP
    promotions = [p for p in state["promotions"] if p["target"] == target]
    assert len(promotions) == 1
    assert promotions[0]["request_id"] == request["_id"]
    assert promotions[0]["change_request"]["details"] == f"Promoting immutable image build {NEW_BUILD}-prod"


def test_prod_change_request_needs_approval(flags, sandbox):
    request = flags.create_change_request(["ap-south"], NEW_MAP, fields_for("ap-south"), "canary")
    assert request["reviewStatus"] == "pending"
    with pytest.raises(ExternalSystemError) as info:
        flags.apply_change_request(request["_id"], "too early")
    assert info.value.status == 400
    assert sandbox.state()["flag"]["rules"]["ap-south"] == PREVIOUS_MAP

    reviewed = flags.review_change_request(request["_id"], "approve", "change board ok")
    assert reviewed["reviewStatus"] == "approved"
    assert flags.get_change_request(request["_id"])["reviewStatus"] == "approved"
    assert flags.apply_change_request(request["_id"], "go")["status"] == "completed"
    assert sandbox.state()["flag"]["rules"]["ap-south"] == NEW_MAP
    with pytest.raises(ValueError):
        flags.review_change_request(request["_id"], "maybe")


def test_declined_request_is_found_not_refiled(flags, sandbox, wait_for):
    sandbox.faults("train_rejected")
    request = flags.create_change_request(["ap-south"], NEW_MAP, fields_for("ap-south"), "canary")
    wait_for(lambda: flags.get_change_request(request["_id"])["reviewStatus"] == "declined")
    found = flags.find_change_request("ap-south", NEW_BUILD, NEW_MAP)
    assert found["_id"] == request["_id"] and found["reviewStatus"] == "declined"
    assert (
        flags.create_change_request(["ap-south"], NEW_MAP, fields_for("ap-south"), "x")["_id"]
        == request["_id"]
    )
    with pytest.raises(ExternalSystemError):
        flags.apply_change_request(request["_id"], "no")
    assert sandbox.state()["flag"]["rules"]["ap-south"] == PREVIOUS_MAP


def test_change_request_survives_conflicts(flags, sandbox):
    sandbox.faults("flags_conflict")
    request = flags.create_change_request(["stage-south"], NEW_MAP, fields_for("stage-south"), "stage")
    assert len(flags.list_change_requests()) == 1
    assert flags.apply_change_request(request["_id"], "go")["status"] == "completed"


def test_a_missing_change_request_is_none_when_asked(flags):
    assert flags.get_change_request("no-such-request", missing_ok=True) is None


def test_a_4xx_names_system_call_and_status(flags, secrets):
    with pytest.raises(ExternalSystemError) as info:
        flags.get_change_request("no-such-request")
    error = info.value
    assert error.system == "launchdarkly"
    assert error.status == 404
    assert (
        "GET /api/v2/projects/default/flags/worker-image/environments/production/approval-requests/"
        in error.call
    )
    assert not any(secret in str(error) for secret in secrets)
