"""The preconditions re-proved before every write (issue 9 items 1, 3, 4, 5, 7; issue 10 item 3)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from image_rollout import preconditions as pc

NEW = {"dev": "2", "prod": "2", "prodfr2": "2", "stage": "2"}
OLD = {"dev": "1", "prod": "1", "prodfr2": "1", "stage": "1"}
OTHER = {"dev": "3", "prod": "3", "prodfr2": "3", "stage": "3"}
NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
APPROVE = {"chosen_options": ["Approve"], "responded_by_user": {"id": "sre-approver", "name": "sre-approver"},
           "responded_at": "2026-01-02T11:00:00Z"}


def test_keys_are_exact_lines():
    key = pc.rollout_key("1-2-3-20260101", "ap-south")
    assert key == "immutable-image/1-2-3-20260101/ap-south"
    assert pc.carries_key(f"Promote ...\n\n{pc.key_line(key)}\n", key)
    assert not pc.carries_key(f"{pc.key_line(key)}-x", key)
    assert not pc.carries_key("Promote immutable image build 1-2-3-20260101 to ap-south", key)


@pytest.mark.parametrize("bad", ["12\n", "١٢٣", "1234567890123", "", "12 "])
def test_the_map_written_must_be_strict_digits(bad):
    verified = {**NEW, "prod": bad}
    assert pc.check_image_map(verified, verified) is not None


def test_the_map_written_must_be_the_verified_one():
    assert pc.check_image_map(NEW, NEW) is None
    assert pc.check_image_map(OLD, NEW) is not None
    assert pc.check_image_map(NEW, None) is not None


def test_override_needs_build_waits_reason_and_user():
    good = {"build_name": "b", "waits": ["bake"], "reason": "INC1 hotfix", "by": "sre-lead"}
    assert pc.parse_override(json.dumps(good), "b")["by"] == "sre-lead"
    assert pc.parse_override(good, "other") is None
    assert pc.parse_override({**good, "reason": " "}, "b") is None
    assert pc.parse_override({**good, "by": ""}, "b") is None
    assert pc.parse_override({**good, "waits": ["approval"]}, "b") is None
    assert pc.parse_override("not json", "b") is None
    hold = pc.Hold("bake", "x", wait="bake")
    assert pc.overridden(hold, pc.parse_override(good, "b"))
    assert not pc.overridden(pc.Hold("drift", "x"), pc.parse_override(good, "b"))
    assert not pc.overridden(pc.Hold("soak", "x", wait="soak"), pc.parse_override(good, "b"))


def test_start_decision_by_an_assigned_approver_other_than_the_trigger():
    assert pc.check_start_decision(APPROVE, approvers=["sre-approver"], triggering_user="jenkins") is None
    assert pc.check_start_decision(None, approvers=["sre-approver"], triggering_user="jenkins")
    assert pc.check_start_decision({**APPROVE, "chosen_options": ["Reject"]}, approvers=["sre-approver"],
                                   triggering_user="jenkins")
    by_trigger = {**APPROVE, "responded_by_user": {"id": "jenkins", "name": "jenkins"}}
    assert pc.check_start_decision(by_trigger, approvers=["sre-approver", "jenkins"], triggering_user="jenkins")
    assert pc.check_start_decision(APPROVE, approvers=["sre-approver"], triggering_user="sre-approver")
    assert pc.check_start_decision(APPROVE, approvers=["someone-else"], triggering_user="jenkins")
    assert pc.check_start_decision({**APPROVE, "responded_by_user": None}, approvers=["sre-approver"],
                                   triggering_user="jenkins")


def test_bake_is_measured_from_launchdarkly_applied_date():
    applied = NOW - timedelta(hours=23)
    hold = pc.check_bake(stage_serves_build=True, stage_applied=applied, bake_seconds=86400, now=NOW)
    assert hold and hold.wait == "bake" and "bake" in str(hold)
    assert pc.check_bake(stage_serves_build=True, stage_applied=NOW - timedelta(hours=25), bake_seconds=86400,
                         now=NOW) is None
    assert pc.check_bake(stage_serves_build=False, stage_applied=NOW - timedelta(days=3), bake_seconds=1,
                         now=NOW).wait is None
    assert pc.check_bake(stage_serves_build=True, stage_applied=None, bake_seconds=1, now=NOW)


def test_soak_must_cover_data_since_the_latest_promotion():
    promoted = NOW - timedelta(hours=30)
    rollback = NOW - timedelta(hours=2)
    soak = {"verdict": "pass", "since": (promoted).isoformat()}
    assert pc.check_soak(canary_serves_build=True, soak=soak, latest=promoted) is None
    latest = pc.latest_promotion([promoted], [rollback])
    assert latest == rollback
    assert pc.check_soak(canary_serves_build=True, soak=soak, latest=latest).wait == "soak"
    assert pc.check_soak(canary_serves_build=False, soak=soak, latest=promoted).wait is None
    assert pc.check_soak(canary_serves_build=True, soak={"verdict": "pass"}, latest=promoted)
    assert pc.check_soak(canary_serves_build=True, soak=None, latest=promoted)
    assert pc.check_soak(canary_serves_build=True, soak={**soak, "build": "other"}, latest=promoted,
                         build_name="mine")
    assert pc.check_soak(canary_serves_build=True, soak={**soak, "build": "mine"}, latest=promoted,
                         build_name="mine") is None


def test_drift_classification():
    kw = {"baseline": OLD, "build_map": NEW}
    assert pc.classify_rule(OLD, ours_applied=False, needs_request=True, **kw) == "write"
    assert pc.classify_rule(NEW, ours_applied=True, needs_request=True, **kw) == "done"
    assert pc.classify_rule(NEW, ours_applied=False, needs_request=True, **kw) == "drift"
    assert pc.classify_rule(NEW, ours_applied=False, needs_request=False, **kw) == "done"
    assert pc.classify_rule(OTHER, ours_applied=False, needs_request=False, **kw) == "drift"
    assert pc.classify_rule(None, ours_applied=False, needs_request=False, **kw) == "drift"


def test_rollback_restores_our_build_even_when_superseded_and_names_the_rest():
    decisions = pc.rollback_decisions(
        ["ap-south", "ap-north", "eu-central"],
        current={"ap-south": NEW, "ap-north": OTHER, "eu-central": OLD},
        build_map=NEW, previous={"ap-south": OLD, "ap-north": OLD, "eu-central": OLD}, newer_build="9-9-9-20991231",
    )
    by = {d["target"]: d for d in decisions}
    assert by["ap-south"]["action"] == "restore" and by["ap-south"]["to"] == OLD
    assert "does not own it yet" in by["ap-south"]["why"]
    assert by["ap-north"]["action"] == "left" and "another map" in by["ap-north"]["why"]
    assert by["eu-central"]["action"] == "left" and "previous" in by["eu-central"]["why"]


def test_approval_settings_the_rollout_can_work_with():
    pc.check_approval_settings(None)
    pc.check_approval_settings({"required": False, "minNumApprovals": 5})
    pc.check_approval_settings({"required": True, "canReviewOwnRequest": False, "minNumApprovals": 1,
                                "serviceKind": "launchdarkly", "requiredApprovalTags": []})
    for bad in ({"minNumApprovals": 2}, {"serviceKind": "servicenow"}, {"requiredApprovalTags": ["x"]},
                {"autoApplyApprovedChanges": True}):
        with pytest.raises(pc.UnsupportedApprovalSettings):
            pc.check_approval_settings({"required": True, "minNumApprovals": 1, **bad})


def test_promotions_started():
    assert not pc.promotions_started({"dev_a.promote_dev_a": "failed"}, ["dev_a.promote_"])
    assert pc.promotions_started({"dev_a.promote_dev_a": "success"}, ["dev_a.promote_"])
