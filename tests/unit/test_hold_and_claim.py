"""Issue 11 items 1 and 3 without Airflow running: the hold Variable's parsing and the guard's decision,
and the one-rollout-per-build claim (its decision, and the compare-and-swap race between two runs)."""

from __future__ import annotations

import hashlib
import json
from unittest import mock

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from image_rollout import contracts
from image_rollout import preconditions as pc
from image_rollout.hooks._http import ExternalSystemError
from image_rollout.operators import base, claim
from image_rollout.operators.promote import PromoteTargetOperator
from image_rollout.plan import load_plan

BUILD = "533-1251-880-20211101"
OTHER = "534-1252-881-20211108"
NEW = {"dev": "2", "prod": "2", "prodfr2": "2", "stage": "2"}
OLD = {"dev": "1", "prod": "1", "prodfr2": "1", "stage": "1"}


# -- hold parsing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [None, "", "  ", "{}"])
def test_no_hold(raw):
    parsed = pc.parse_holds(raw)
    assert pc.check_hold(parsed, BUILD) is None and parsed["problems"] == []


def test_a_hold_names_its_build_who_and_why_and_holds_no_other():
    parsed = pc.parse_holds(json.dumps({BUILD: {"by": "jdoe", "reason": "INC0012345: dal10 alerts"}}))
    hold = pc.check_hold(parsed, BUILD)
    assert hold is not None and "jdoe" in hold.reason and "INC0012345: dal10 alerts" in hold.reason
    assert f"remove {BUILD}" in hold.reason
    assert pc.check_hold(parsed, OTHER) is None
    assert parsed["builds"][BUILD]["by"] == "jdoe" and parsed["problems"] == []


@pytest.mark.parametrize("raw, named", [
    ("INC0012345 hold it", "not JSON"),
    ('["533-1251-880-20211101"]', "must be a JSON object"),
    ('{"533-1251-880-2021110": {"by": "a", "reason": "b"}}', "is not a build name"),
])
def test_an_unreadable_hold_holds_every_build_and_says_why(raw, named):
    parsed = pc.parse_holds(raw)
    assert parsed["hold_all"] and any(named in p for p in parsed["problems"]), parsed["problems"]
    for build in (BUILD, OTHER):
        hold = pc.check_hold(parsed, build)
        assert hold is not None and named in hold.reason and "every build is held" in hold.reason


@pytest.mark.parametrize("entry, named", [
    ({"by": "jdoe"}, "missing reason"),
    ({"reason": "x", "by": " "}, "missing by"),
    ("jdoe: INC1", "must be an object"),
    ({"by": "jdoe", "reason": "x", "resume": True}, "unknown field(s) ['resume']"),
])
def test_a_malformed_entry_still_holds_its_build_only(entry, named):
    parsed = pc.parse_holds(json.dumps({BUILD: entry}))
    hold = pc.check_hold(parsed, BUILD)
    assert hold is not None and named in hold.reason and "malformed" in hold.reason
    assert any(named in p for p in parsed["problems"])
    assert pc.check_hold(parsed, OTHER) is None


# -- the guard: a held build's write defers, says why once, and says when the hold ends -------------------

class FakeTI:
    def __init__(self):
        self.pushed: dict = {}
        self.map_index = -1
        self.dag_id = "immutable_image_rollout"

    def xcom_pull(self, task_ids, key="return_value", map_indexes=None):
        if key == "return_value" and task_ids == contracts.VERIFY_TASK:
            return {"name": BUILD, "images": NEW, "baseline": {"dev-south": OLD}}
        return self.pushed.get(key)

    def xcom_push(self, key, value):
        self.pushed[key] = value


class Flags:
    def __init__(self):
        self.rules = {"dev-south": dict(OLD)}
        self.writes = []

    def approval_settings(self):
        return {"required": False}

    def rule_value(self, target):
        return self.rules[target]

    def find_change_request(self, *a):
        return None

    def point_rule(self, target, image_map, comment=""):
        self.writes.append(target)
        self.rules[target] = image_map


def _promote(monkeypatch, variables: dict):
    flags = Flags()
    monkeypatch.setattr(base.Variable, "get", staticmethod(lambda key, default=None: variables.get(key, default)))
    monkeypatch.setattr(base, "flags_hook", lambda: flags)
    monkeypatch.setattr(base, "github_hook", lambda: mock.Mock(get_file=lambda path: None))
    said: list[str] = []
    monkeypatch.setattr(base.RolloutOperator, "say", lambda self, text, escalate=False: said.append(text))
    op = PromoteTargetOperator(task_id="promote_dev_south", target="dev-south")
    context = {"ti": FakeTI(), "run_id": "manual__1", "dag_run": mock.Mock(triggering_user_name="jenkins")}
    return op, context, flags, said


def test_a_held_build_defers_its_write_says_why_once_then_resumes(monkeypatch):
    variables = {pc.HOLD_VARIABLE: json.dumps({BUILD: {"by": "jdoe", "reason": "INC1 dal10"}})}
    op, context, flags, said = _promote(monkeypatch, variables)
    for _ in range(2):
        with pytest.raises(TaskDeferred):
            op.execute(context)
    assert flags.writes == [], "written while held"
    held = [t for t in said if "HELD" in t]
    assert len(held) == 1 and "jdoe" in held[0] and "INC1 dal10" in held[0]
    variables[pc.HOLD_VARIABLE] = "{}"  # the SRE resumes it
    op.execute(context)
    assert flags.writes == ["dev-south"]
    assert any("lifted" in t for t in said)


def test_a_hold_on_another_build_does_not_hold_this_one(monkeypatch):
    variables = {pc.HOLD_VARIABLE: json.dumps({OTHER: {"by": "jdoe", "reason": "x"}})}
    op, context, flags, said = _promote(monkeypatch, variables)
    op.execute(context)
    assert flags.writes == ["dev-south"] and not [t for t in said if "HELD" in t]


def test_a_malformed_hold_holds_and_logs_an_error_naming_the_problem(monkeypatch, capfd):
    op, context, flags, said = _promote(monkeypatch, {pc.HOLD_VARIABLE: "hold 533-1251-880-20211101 please"})
    with pytest.raises(TaskDeferred):
        op.execute(context)
    assert flags.writes == []
    logged = capfd.readouterr().out
    assert any("error" in line and "Invalid hold" in line and "not JSON" in line for line in logged.splitlines())


# -- one rollout per build -------------------------------------------------------------------------

def test_claim_decision():
    record = {"build_name": BUILD, "run_id": "rollout__a", "claimed_at": "t", "finished_at": None}
    assert pc.claim_decision(None, run_id="b", claimant_state=None)[0] == "claim"
    assert pc.claim_decision(record, run_id="rollout__a", claimant_state=None)[0] == "ours"
    for state in ("running", "queued"):
        decision, why = pc.claim_decision(record, run_id="manual__b", claimant_state=state)
        assert decision == "refuse" and "rollout__a" in why
    for state in ("failed", "success", None):  # ended, marked by hand, or deleted: take over
        assert pc.claim_decision(record, run_id="manual__b", claimant_state=state)[0] == "claim"
    finished = {**record, "finished_at": "2026-01-01T00:00:00Z"}
    for run_id in ("manual__b", "rollout__a"):
        assert pc.claim_decision(finished, run_id=run_id, claimant_state="success")[0] == "finished"


@pytest.mark.parametrize("text, named", [
    ("not json", "not JSON"), ("[]", "not a JSON object"),
    (json.dumps({"build_name": OTHER, "run_id": "r"}), "names build"),
    (json.dumps({"build_name": BUILD}), "no run_id"),
    (json.dumps({"build_name": BUILD, "run_id": "r", "finished_at": "yesterday"}), "not a time"),
])
def test_a_malformed_record_is_an_error_naming_the_problem(text, named):
    with pytest.raises(pc.MalformedRolloutRecord, match=named):
        pc.parse_rollout_record(text, BUILD)


class CasGitHub:
    """GitHub's contents API as far as the claim uses it: create-only and update-if-unchanged."""

    def __init__(self):
        self.files: dict[str, str] = {}
        self.before_write = None

    def get_file(self, path):
        text = self.files.get(path)
        return (text, hashlib.sha1(text.encode()).hexdigest()) if text is not None else None

    def put_file(self, path, text, message, *, sha=None, create_only=False):
        if self.before_write:
            hook, self.before_write = self.before_write, None
            hook()  # another run writes between this run's read and its write
        current = self.get_file(path)
        if (create_only and current) or (sha and (not current or current[1] != sha)):
            raise ExternalSystemError(system="github", call=f"PUT {path}", status=409, reason="changed")
        self.files[path] = text
        return "c"


class Runs:
    def __init__(self, states: dict[str, str]):
        self.states = states
        self.dag_id = "immutable_image_rollout"

    def get_dr_count(self, dag_id, run_ids):
        return sum(1 for r in run_ids if r in self.states)

    def get_dagrun_state(self, dag_id, run_id):
        return self.states[run_id]


def test_two_runs_verifying_at_once_only_one_claims_the_build():
    plan, github = load_plan("sandbox"), CasGitHub()
    runs = Runs({"rollout__a": "running", "manual__b": "running"})
    # Both read "nobody claimed it"; a's write lands between b's read and b's write.
    github.before_write = lambda: claim.claim(runs, github, plan, BUILD, "rollout__a")
    decision, why, record = claim.claim(runs, github, plan, BUILD, "manual__b")
    assert decision == "refuse" and record["run_id"] == "rollout__a", why
    assert json.loads(github.files[plan.rollout_record_path(BUILD)])["run_id"] == "rollout__a"


def test_a_run_takes_over_from_an_ended_one_and_the_ended_one_then_writes_nothing(monkeypatch):
    plan, github = load_plan("sandbox"), CasGitHub()
    runs = Runs({"rollout__a": "running"})
    assert claim.claim(runs, github, plan, BUILD, "rollout__a")[0] == "claim"
    runs.states.update({"rollout__a": "failed", "manual__b": "running"})
    assert claim.claim(runs, github, plan, BUILD, "manual__b")[0] == "claim"
    assert claim.holder(github, plan, BUILD, "manual__b") is None
    assert "manual__b took over" in claim.holder(github, plan, BUILD, "rollout__a")
    # a cleared task of the ended run comes back to life: its next write stops
    monkeypatch.setattr(base, "github_hook", lambda: github)
    op = PromoteTargetOperator(task_id="promote_dev_south", target="dev-south")
    with pytest.raises(AirflowFailException, match="manual__b took over"):
        op.stop_if_taken_over({"run_id": "rollout__a"}, BUILD)
    # b finishes; a third run is a no-op rerun
    assert claim.mark_finished(github, plan, BUILD, "manual__b")["finished_at"]
    assert claim.claim(runs, github, plan, BUILD, "manual__c")[0] == "finished"


def test_a_malformed_record_fails_the_claim_naming_the_file():
    plan, github = load_plan("sandbox"), CasGitHub()
    github.files[plan.rollout_record_path(BUILD)] = "{oops"
    with pytest.raises(AirflowFailException, match="not JSON.*fix train_evidence/rollouts/"):
        claim.claim(Runs({}), github, plan, BUILD, "manual__b")
    assert github.files[plan.rollout_record_path(BUILD)] == "{oops"
