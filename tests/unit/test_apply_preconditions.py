"""ApplyChangeRequestOperator re-proves its preconditions from the systems of record, whatever XCom
says: it holds (defers) and never applies when one fails (issue 9 items 1 and 3). Hooks are mocked."""

from __future__ import annotations

import json
from datetime import timedelta
from unittest import mock

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from image_rollout import contracts
from image_rollout.operators import base
from image_rollout.operators.promote import ApplyChangeRequestOperator

BUILD = "533-1251-880-20211101"
NEW = {"dev": "2", "prod": "2", "prodfr2": "2", "stage": "2"}
OLD = {"dev": "1", "prod": "1", "prodfr2": "1", "stage": "1"}
APPROVED = {"chosen_options": ["Approve"], "responded_by_user": {"id": "sre-approver", "name": "sre-approver"},
            "responded_at": "2026-01-01T00:00:00Z"}


class FakeTI:
    def __init__(self, xcoms):
        self.xcoms = dict(xcoms)
        self.map_index = -1
        self.pushed = {}
        self.dag_id = "immutable_image_rollout"
        self.id = "ti"

    def xcom_pull(self, task_ids, key="return_value", map_indexes=None):
        return self.pushed.get(key) if task_ids.startswith("ap_south.apply") else self.xcoms.get((task_ids, key))

    def xcom_push(self, key, value):
        self.pushed[key] = value


class FakeFlags:
    def __init__(self, rules, stage_applied_ms):
        self.rules = rules
        self.stage_applied_ms = stage_applied_ms
        self.applied = []
        self.deleted = set()

    def approval_settings(self):
        return {"required": False}

    def rule_value(self, target):
        return self.rules[target]

    def find_change_request(self, target, build, image_map):
        if target == "stage-south":
            return {"_id": "s", "status": "completed", "appliedDate": self.stage_applied_ms}
        return None

    def get_change_request(self, request_id, *, missing_ok=False):
        if request_id in self.deleted:  # LaunchDarkly answers 404 for a deleted request
            if missing_ok:
                return None
            raise AssertionError(f"GET of deleted request {request_id} without missing_ok: a 404 the task retries")
        return {"_id": request_id, "reviewStatus": "approved", "status": "pending"}

    def apply_change_request(self, request_id, comment=""):
        self.applied.append(request_id)
        self.rules["ap-south"] = NEW
        return {"_id": request_id, "status": "completed", "appliedDate": 1}


class FakeEvidence:
    """The evidence repository: whether a person's Stop on a drift is recorded there."""

    def __init__(self, stopped: bool):
        self.stopped = stopped

    def get_file(self, path):
        return None  # no rollout record: the run's claim on the build is not in question here

    def find_commit(self, path, key):
        return [{"sha": "c-stop"}] if self.stopped and key.endswith("/drift-ap-south-stop") else []


class FakeJenkins:
    """Jenkins serving the build's image_ids.json artifact."""

    def __init__(self, artifact: dict):
        self.artifact = artifact
        self.read = []

    def get_artifact_text(self, job, number, path):
        self.read.append((job, number, path))
        return json.dumps(self.artifact)


def _run(monkeypatch, *, decision=APPROVED, bake_left=0.0, override=None, trigger="jenkins", stopped=False,
         jenkins=None):
    now = contracts.utcnow()
    stage_applied = now - timedelta(seconds=86400) + timedelta(seconds=bake_left)
    flags = FakeFlags({"ap-south": OLD, "stage-south": NEW}, int(stage_applied.timestamp() * 1000))
    variables = {"image_rollout_override": json.dumps(override) if override else None}
    monkeypatch.setattr(base, "flags_hook", lambda: flags)
    monkeypatch.setattr(base.Variable, "get", staticmethod(lambda key, default=None: variables.get(key, default)))
    said = []
    monkeypatch.setattr(base.RolloutOperator, "say", lambda self, text, escalate=False: said.append(text))
    monkeypatch.setattr(base.RolloutOperator, "_record", lambda self, *a, **k: "sha")
    monkeypatch.setattr(base, "github_hook", lambda: FakeEvidence(stopped))
    build = {"name": BUILD, "images": NEW, "baseline": {"ap-south": OLD, "stage-south": OLD}}
    if jenkins is not None:
        build.update(job="smith-immutable-image", number=434)
        monkeypatch.setattr(base, "jenkins_hook", lambda: jenkins)
    ti = FakeTI({
        ("build_verification.verify_build", "return_value"): build,
        ("ap_south.file_change_request_ap_south", "return_value"): {"request_id": "r1", "previous": OLD},
        ("ap_south.approve_ap_south", "return_value"): decision,
    })
    op = ApplyChangeRequestOperator(task_id="apply_change_request_ap_south", target="ap-south",
                                    file_task_id="ap_south.file_change_request_ap_south",
                                    approval_task_id="ap_south.approve_ap_south", bake_target="stage-south",
                                    bake_seconds=86400)
    op.task_id = "ap_south.apply_change_request_ap_south"
    context = {"ti": ti, "run_id": "r", "dag_run": mock.Mock(triggering_user_name=trigger), "params": {}}
    return op, context, flags, said, ti


def test_applies_when_everything_holds(monkeypatch):
    op, context, flags, _said, _ti = _run(monkeypatch)
    result = op.execute(context)
    assert flags.applied == ["r1"] and result["changed"] is True


def test_bake_not_over_holds_and_never_applies(monkeypatch):
    op, context, flags, said, ti = _run(monkeypatch, bake_left=3600)
    with pytest.raises(TaskDeferred):
        op.execute(context)
    assert flags.applied == []
    assert any("bake" in text for text in said)
    assert ti.pushed["held"]["precondition"] == "bake"


def test_decision_by_the_triggering_user_holds(monkeypatch):
    by_trigger = {**APPROVED, "responded_by_user": {"id": "jenkins", "name": "jenkins"}}
    op, context, flags, said, _ti = _run(monkeypatch, decision=by_trigger)
    with pytest.raises(TaskDeferred):
        op.execute(context)
    assert flags.applied == []
    assert any("start decision" in text for text in said)


def test_no_decision_recorded_holds(monkeypatch):
    op, context, flags, _said, _ti = _run(monkeypatch, decision=None)
    with pytest.raises(TaskDeferred):
        op.execute(context)
    assert flags.applied == []


def test_the_override_goes_past_the_bake_and_is_recorded(monkeypatch):
    override = {"build_name": BUILD, "waits": ["bake"], "reason": "INC1 hotfix", "by": "sre-lead"}
    op, context, flags, said, ti = _run(monkeypatch, bake_left=3600, override=override)
    op.execute(context)
    assert flags.applied == ["r1"]
    assert ti.pushed["override"]["by"] == "sre-lead" and ti.pushed["override"]["reason"] == "INC1 hotfix"
    assert any(text.startswith("OVERRIDE: sre-lead") for text in said)


def test_the_triggering_user_cannot_override(monkeypatch):
    override = {"build_name": BUILD, "waits": ["bake"], "reason": "r", "by": "jenkins"}
    op, context, flags, _said, _ti = _run(monkeypatch, bake_left=3600, override=override)
    with pytest.raises(TaskDeferred):
        op.execute(context)
    assert flags.applied == []


def test_a_canary_already_on_the_build_without_our_request_is_drift(monkeypatch):
    op, context, flags, said, _ti = _run(monkeypatch)
    flags.rules["ap-south"] = NEW
    asked = []
    monkeypatch.setattr(base.RolloutOperator, "ask_drift",
                        lambda self, ctx, target, current, build: asked.append(target) or (_ for _ in ()).throw(
                            RuntimeError("parked")))
    with pytest.raises(RuntimeError, match="parked"):
        op.execute(context)
    assert asked == ["ap-south"] and flags.applied == []


def test_a_drift_someone_chose_to_stop_on_stops_again_without_asking(monkeypatch):
    """Whatever starts another try (a retry, a clear), a recorded Stop on the same drift is not asked again."""
    op, context, flags, said, _ti = _run(monkeypatch, stopped=True)
    flags.rules["ap-south"] = NEW
    asked = []
    monkeypatch.setattr(base.RolloutOperator, "ask_drift", lambda self, *a: asked.append(a))
    with pytest.raises(AirflowFailException, match="Stop was chosen"):
        op.execute(context)
    assert asked == [] and flags.applied == []


def test_the_map_written_is_proved_against_jenkins_not_xcom(monkeypatch):
    jenkins = FakeJenkins(NEW)
    op, context, flags, _said, _ti = _run(monkeypatch, jenkins=jenkins)
    op.execute(context)
    assert flags.applied == ["r1"]
    assert jenkins.read == [("smith-immutable-image", 434, "image_ids.json")]


def test_a_withdrawn_train_fails_for_good_and_names_the_way_out(monkeypatch):
    """The train was deleted (a rejected start withdraws it) and the apply was cleared: no retry can help."""
    op, context, flags, _said, _ti = _run(monkeypatch)
    flags.deleted.add("r1")
    with pytest.raises(AirflowFailException, match=r"change request r1 for ap-south no longer exists in LaunchDarkly"
                                                   r".*clear ap_south\.file_change_request_ap_south"):
        op.execute(context)
    assert flags.applied == [] and flags.rules["ap-south"] == OLD


def test_an_image_map_edited_in_xcom_is_never_written(monkeypatch):
    """An operator who edits the verified build's XCom cannot choose the map: Jenkins' artifact decides."""
    op, context, flags, _said, _ti = _run(monkeypatch, jenkins=FakeJenkins({**NEW, "prod": "666"}))
    with pytest.raises(AirflowFailException, match="not the verified build's"):
        op.execute(context)
    assert flags.applied == [] and flags.rules["ap-south"] == OLD
