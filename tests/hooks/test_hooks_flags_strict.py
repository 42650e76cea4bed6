"""FlagsHook against a strict LaunchDarkly (the real API's rules the lenient sandbox lacks)."""

from __future__ import annotations

import pytest

from image_rollout.hooks._http import ExternalSystemError, ResponseLostError
from image_rollout.hooks.flags import LD_API_VERSION, ApprovalRequired, FlagsHook
from image_rollout.preconditions import carries_key, rollout_key
from tests.hooks.fake_launchdarkly import FakeLaunchDarkly

BUILD = "533-1251-880-20211101"
PREVIOUS_MAP = {"dev": "8495980", "prod": "8496814", "prodfr2": "8496850", "stage": "8496586"}
NEW_MAP = {"dev": "8935101", "prod": "8935154", "prodfr2": "8935160", "stage": "8935122"}
TARGETS = ["dev-south", "stage-south", "ap-south"]
FIELDS = {"details": f"Promoting immutable image build {BUILD}-prod", "target": "ap-south", "build": BUILD}


def _hook(stub_server, stub_connection, *, required: bool) -> tuple[FlagsHook, FakeLaunchDarkly]:
    fake = FakeLaunchDarkly(TARGETS, PREVIOUS_MAP, required=required)
    base = stub_server(fake.respond)
    conn_id = f"ld_strict_{'required' if required else 'open'}"
    stub_connection(
        conn_id,
        f"{base}/launchdarkly",
        password="ld-token-123456",
        extra={"retries": 1, "retry_wait": 0.01, "timeout": 5},
    )
    return FlagsHook(launchdarkly_conn_id=conn_id, conflict_retries=2), fake


@pytest.fixture
def open_env(stub_server, stub_connection):
    return _hook(stub_server, stub_connection, required=False)


@pytest.fixture
def required_env(stub_server, stub_connection):
    return _hook(stub_server, stub_connection, required=True)


def test_every_request_sends_the_api_version(open_env):
    flags, fake = open_env
    flags.rule_values()
    flags.approval_settings()
    flags.point_rule("dev-south", NEW_MAP, "dev")
    assert fake.versions and set(fake.versions) == {LD_API_VERSION}


def test_approval_settings_come_from_the_environment(open_env, required_env):
    assert open_env[0].approval_settings()["required"] is False
    settings = required_env[0].approval_settings()
    assert settings["required"] is True
    assert settings["canReviewOwnRequest"] is False
    assert settings["minNumApprovals"] == 1


def test_point_rule_under_required_approval_is_a_clear_error(required_env):
    flags, fake = required_env
    with pytest.raises(ApprovalRequired) as info:
        flags.point_rule("dev-south", NEW_MAP, "direct write")
    assert isinstance(info.value, ExternalSystemError)
    assert info.value.status == 405
    assert "requires approval" in str(info.value)
    assert fake.served("dev-south") == PREVIOUS_MAP
    assert fake.writes == []


def test_request_is_found_by_marker_and_content_not_echoed_fields(open_env):
    flags, fake = open_env
    request = flags.create_change_request(["ap-south"], NEW_MAP, FIELDS, "Promote to ap-south")
    assert "integrationConfig" not in request, "LaunchDarkly does not echo it"
    assert fake.sent_configs[request["_id"]] == FIELDS, "but the runbook fields are sent"
    assert carries_key(request["description"], rollout_key(BUILD, "ap-south"))
    assert request["description"].startswith("Promote to ap-south")

    assert flags.find_change_request("ap-south", BUILD, NEW_MAP)["_id"] == request["_id"]
    assert flags.find_change_request("ap-south", BUILD)["_id"] == request["_id"]
    assert flags.find_change_request("ap-south", BUILD, PREVIOUS_MAP) is None, "content must match"
    assert flags.find_change_request("stage-south", BUILD, NEW_MAP) is None
    assert flags.find_change_request("ap-south", "other-build", NEW_MAP) is None

    again = flags.create_change_request(
        ["ap-south"], NEW_MAP, FIELDS, "retried", key=rollout_key(BUILD, "ap-south")
    )
    assert again["_id"] == request["_id"]
    assert len(fake.requests) == 1


def test_a_copied_marker_with_other_content_is_not_ours(open_env):
    flags, fake = open_env
    key = rollout_key(BUILD, "ap-south")
    # Someone files a request with our marker but pointing ap-south at the previous map.
    person = flags.create_change_request(
        ["ap-south"], PREVIOUS_MAP, {}, "manual", key=key, reuse_existing=False
    )
    assert flags.find_change_request("ap-south", BUILD, NEW_MAP) is None
    ours = flags.create_change_request(["ap-south"], NEW_MAP, FIELDS, "ours", key=key)
    assert ours["_id"] != person["_id"]
    assert flags.find_change_request("ap-south", BUILD, NEW_MAP)["_id"] == ours["_id"]


def test_a_marker_must_be_its_own_line():
    key = rollout_key(BUILD, "ap-south")
    assert carries_key(f"text\n\nRollout-Key: {key}\n", key)
    assert not carries_key(f"text Rollout-Key: {key}", key)
    assert not carries_key(f"Rollout-Key: {key}-extra", key)
    assert not carries_key(None, key)


def test_missing_variation_goes_into_the_request_under_required(required_env):
    flags, fake = required_env
    request = flags.create_change_request(
        ["dev-south"], NEW_MAP, {"target": "dev-south", "build": BUILD}, "dev"
    )
    kinds = [i["kind"] for i in request["instructions"]]
    assert kinds == ["addVariation", "updateRuleVariationOrRollout"]
    assert request["instructions"][0]["value"] == NEW_MAP
    assert request["instructions"][1]["variationId"] == request["instructions"][0]["_id"]
    assert len(fake.variations) == 1, "nothing written before approval"
    assert flags.find_change_request("dev-south", BUILD, NEW_MAP)["_id"] == request["_id"]

    fake.approve(request["_id"])
    applied = flags.apply_change_request(request["_id"], "go")
    assert applied["status"] == "completed"
    assert fake.served("dev-south") == NEW_MAP
    assert flags.rule_value("dev-south") == NEW_MAP


def test_known_required_skips_the_direct_variation_add(required_env):
    flags, fake = required_env
    flags.create_change_request(
        ["dev-south"], NEW_MAP, {"target": "dev-south", "build": BUILD}, "dev", approvals_required=True
    )
    assert [w for w in fake.writes if w.startswith("PATCH")] == []


def test_missing_variation_is_added_directly_when_allowed(open_env):
    flags, fake = open_env
    request = flags.create_change_request(
        ["stage-south"], NEW_MAP, {"target": "stage-south", "build": BUILD}, "x"
    )
    assert [i["kind"] for i in request["instructions"]] == ["updateRuleVariationOrRollout"]
    assert len(fake.variations) == 2


def test_lost_answer_to_create_files_one_request(required_env):
    flags, fake = required_env
    fake.lose_next_write = True
    request = flags.create_change_request(["ap-south"], NEW_MAP, FIELDS, "canary")
    assert len(fake.requests) == 1
    assert request["_id"] in fake.requests
    assert [w for w in fake.writes if w.startswith("POST")] == [
        "POST /api/v2/projects/default/flags/worker-image/environments/production/approval-requests"
    ]


def test_lost_answer_to_point_rule_writes_once(open_env):
    flags, fake = open_env
    flags.point_rule("stage-south", NEW_MAP, "stage")  # adds the variation: the lost write is the rule's
    fake.lose_next_write = True
    assert flags.point_rule("dev-south", NEW_MAP, "dev") is True, "the lost write landed: it was ours"
    assert fake.served("dev-south") == NEW_MAP
    assert len([w for w in fake.writes if w.startswith("PATCH")]) == 3, "one variation add, two rule writes"


def test_lost_answer_to_apply_applies_once(required_env):
    flags, fake = required_env
    request = flags.create_change_request(["ap-south"], NEW_MAP, FIELDS, "canary")
    fake.approve(request["_id"])
    fake.lose_next_write = True
    assert flags.apply_change_request(request["_id"], "go")["status"] == "completed"
    assert len([w for w in fake.writes if w.endswith("/apply")]) == 1


def test_a_lost_answer_is_never_resent_blindly(open_env):
    flags, fake = open_env
    fake.lose_next_write = True
    with pytest.raises(ResponseLostError):
        flags.request_json(
            "POST",
            "/api/v2/projects/default/flags/worker-image/environments/production/approval-requests",
            json={"description": "x", "instructions": []},
        )
    assert len(fake.writes) == 1


def test_delete_change_request(required_env):
    flags, fake = required_env
    request = flags.create_change_request(["ap-south"], NEW_MAP, FIELDS, "canary")
    assert flags.delete_change_request(request["_id"]) is True
    assert fake.requests == {}
    assert flags.find_change_request("ap-south", BUILD, NEW_MAP) is None
    assert flags.delete_change_request(request["_id"]) is False, "deleted already"
    assert flags.get_change_request(request["_id"], missing_ok=True) is None
    with pytest.raises(ExternalSystemError) as info:
        flags.get_change_request(request["_id"])
    assert info.value.status == 404
