"""Backout on demand (issue 11 item 2): which targets, back to what, and what is refused before any write."""

from __future__ import annotations

import json

import pytest

from image_rollout import backout as bo
from image_rollout.plan import load_plan

NEW = {"dev": "2", "prod": "2", "prodfr2": "2", "stage": "2"}
OLD = {"dev": "1", "prod": "1", "prodfr2": "1", "stage": "1"}
OLDER = {"dev": "0", "prod": "0", "prodfr2": "0", "stage": "0"}
OTHER = {"dev": "3", "prod": "3", "prodfr2": "3", "stage": "3"}
NAMES = bo.build_names([{"name": "1-1-1-20260101", "value": OLD}, {"name": "2-2-2-20260201", "value": NEW},
                        {"name": "dev=3 prod=3", "value": OTHER}])
PLAN = load_plan("sandbox")
TARGETS = [t.target for t in PLAN.targets]


def test_targets_all_or_a_list_in_plan_order():
    assert bo.resolve_targets("all", TARGETS) == TARGETS
    assert bo.resolve_targets(["ap-south", "dev-south"], TARGETS) == ["dev-south", "ap-south"]


@pytest.mark.parametrize("bad, named", [
    (["dev-south", "mars-north"], "mars-north"),
    (["ap-south", "AP-SOUTH"], "AP-SOUTH"),
    ([], "non-empty"),
    ("some", "some"),
    ([3], "target names"),
])
def test_unknown_or_malformed_targets_are_refused_naming_them(bad, named):
    with pytest.raises(bo.BackoutRefused, match=named):
        bo.resolve_targets(bad, TARGETS)


@pytest.mark.parametrize("reason", ["", "   ", None, 7])
def test_a_reason_is_required(reason):
    with pytest.raises(bo.BackoutRefused, match="reason is required"):
        bo.check_reason(reason)
    assert bo.check_reason("  autorecovery\nfailures ") == "autorecovery failures"


def test_before_the_rollout_prefers_the_promotions_own_record_then_the_latest_run():
    records = [
        {"baseline": {"dev-south": OLDER, "ap-south": OLD}, "promotions": [
            {"target": "dev-south", "previous": OLDER, "promoted_at": "2026-01-01T00:00:00Z"}]},
        {"baseline": {"dev-south": OLD, "ap-south": OLD}, "promotions": [
            {"target": "dev-south", "previous": OLD, "promoted_at": "2026-01-03T00:00:00Z"},
            {"target": "ap-south", "previous": None, "promoted_at": "2026-01-04T00:00:00Z"}]},
    ]
    before = bo.before_rollout(records, ["dev-south", "ap-south", "eu-fr2"])
    assert before == {"dev-south": OLD, "ap-south": OLD, "eu-fr2": None}


def test_only_a_rule_serving_the_build_is_restored_the_rest_left_alone_and_named():
    current = {"dev-south": NEW, "stage-south": OTHER, "ap-south": OLD, "eu-fr2": NEW}
    before = {"dev-south": OLD, "stage-south": OLD, "ap-south": OLD, "eu-fr2": NEW}
    decisions = bo.decide(list(current), build_name="2-2-2-20260201", build_map=NEW, current=current,
                          before=before, to_map=None, names=NAMES)
    by = {d["target"]: d for d in decisions}
    assert by["dev-south"]["action"] == "restore" and by["dev-south"]["to"] == OLD
    assert by["dev-south"]["to_build"] == "1-1-1-20260101"
    assert by["stage-south"]["action"] == "left" and "not ours to change" in by["stage-south"]["why"]
    assert by["ap-south"]["action"] == "left" and "already serves build 1-1-1-20260101" in by["ap-south"]["why"]
    assert by["eu-fr2"]["action"] == "left" and "nothing to restore" in by["eu-fr2"]["why"]


def test_to_build_overrides_what_each_target_served_before():
    current = {"dev-south": NEW, "ap-south": NEW}
    decisions = bo.decide(list(current), build_name="2-2-2-20260201", build_map=NEW, current=current,
                          before={"dev-south": OLD, "ap-south": None}, to_map=OLDER, names=NAMES)
    assert [(d["target"], d["action"], d["to"]) for d in decisions] == [
        ("dev-south", "restore", OLDER), ("ap-south", "restore", OLDER)]


def test_a_target_with_no_record_of_before_refuses_the_whole_backout():
    with pytest.raises(bo.BackoutRefused, match=r"no record of what \['ap-south'\] served before.*give to_build"):
        bo.decide(["dev-south", "ap-south"], build_name="2-2-2-20260201", build_map=NEW,
                  current={"dev-south": NEW, "ap-south": NEW}, before={"dev-south": OLD}, to_map=None, names=NAMES)


def test_a_map_to_restore_that_is_not_a_whole_image_map_is_refused():
    with pytest.raises(bo.BackoutRefused, match="dev-south to is not a whole image map"):
        bo.decide(["dev-south"], build_name="2-2-2-20260201", build_map=NEW, current={"dev-south": NEW},
                  before={}, to_map={"dev": "1", "prod": "x"}, names=NAMES)


def test_route_trains_and_prod_start_decision_follow_the_plan():
    current = {t: NEW for t in TARGETS}
    decisions = bo.decide(TARGETS, build_name="2-2-2-20260201", build_map=NEW, current=current,
                          before={t: OLD for t in TARGETS}, to_map=None, names=NAMES)
    routed = {d["target"]: d for d in bo.route(decisions, PLAN, approvals_required=False)}
    assert routed["dev-south"]["via"] == "flag" and not routed["dev-south"]["start_decision"]
    assert routed["stage-south"]["via"] == "change request" and not routed["stage-south"]["start_decision"]
    assert routed["ap-south"]["via"] == "change request" and routed["ap-south"]["start_decision"]
    assert routed["eu-fr2"]["start_decision"]
    required = {d["target"]: d for d in bo.route(decisions, PLAN, approvals_required=True)}
    assert all(d["via"] == "change request" for d in required.values())
    assert bo.prod_targets(PLAN) == TARGETS[TARGETS.index("ap-south"):]


def test_image_ids_are_read_from_the_evidence_file_strictly():
    text = "SoftLayer armada-worker image IDs:\n```\n" + json.dumps(NEW, indent=2) + "\n```\n"
    assert bo.image_ids_from_evidence(text) == NEW
    assert bo.image_ids_from_evidence(text.replace('"2"', '"2 "', 1)) is None
    assert bo.image_ids_from_evidence(text.replace('"stage"', '"qa"')) is None
    assert bo.image_ids_from_evidence(None) is None


def test_the_plan_text_names_every_target_and_how():
    decisions = bo.route(bo.decide(["dev-south", "ap-south"], build_name="2-2-2-20260201", build_map=NEW,
                                   current={"dev-south": NEW, "ap-south": OTHER}, before={"dev-south": OLD},
                                   to_map=None, names=NAMES), PLAN, approvals_required=False)
    text = bo.plan_text("2-2-2-20260201", decisions, reason="soak failed", names=NAMES, dry_run=True)
    assert text.startswith("DRY RUN: Backout of immutable image build 2-2-2-20260201 (soak failed)")
    assert "- dev-south: restore to build 1-1-1-20260101 (dev=1 prod=1 prodfr2=1 stage=1) via flag" in text
    assert "- ap-south: left alone: it serves (dev=3 prod=3 prodfr2=3 stage=3), not build 2-2-2-20260201" in text
