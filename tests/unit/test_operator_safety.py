"""Operator-side safety that needs no Airflow run: keyed evidence commits, truthful evidence, the DAG's
wiring of the preconditions, the approval settings check (issue 9 items 3, 7, 8, 9; issue 10 item 3)."""

from __future__ import annotations

import pytest

from image_rollout import preconditions as pc
from image_rollout.evidence_commits import append_record, commit_once
from image_rollout.evidence_file import TRUNCATION_MARKER, Evidence, Record, console_excerpt, render
from image_rollout.operators.promote import check_approval_settings

BUILD = "532-1250-879-20210818"
EVIDENCE = dict(
    build_name=BUILD, image_ids={"dev": "1", "prod": "2", "prodfr2": "3", "stage": "4"},
    console_url="https://jenkins.example/job/x/1/console", console_output="console",
    razee_link="https://razee.example/flags", concept_doc="https://docs.example/concept",
)


class FakeGitHub:
    """Files and commits, as the evidence hook of issue 10 serves them."""

    def __init__(self):
        self.files: dict[str, str] = {}
        self.commits: list[dict] = []

    def get_file(self, path):
        return (self.files[path], "blob") if path in self.files else None

    def put_file(self, path, text, message, *, sha=None):
        self.files[path] = text
        commit = {"sha": f"c{len(self.commits)}", "message": message, "path": path, "text": text}
        self.commits.append(commit)
        return commit["sha"]

    def list_commits(self, path):
        return [c for c in reversed(self.commits) if c["path"] == path]

    def find_commit(self, path, key):
        return [c for c in self.list_commits(path) if pc.carries_key(c["message"], key)]

    def file_at(self, path, sha):
        return next(c["text"] for c in self.commits if c["sha"] == sha)


def test_console_excerpt_keeps_head_and_tail_with_a_marker():
    text = "PROVENANCE upstream SmithPackageSync-V2 #77\n" + "x" * 100_000 + "\nFinished: SUCCESS"
    cut = console_excerpt(text, limit=1000, head=300)
    assert cut.startswith("PROVENANCE upstream SmithPackageSync-V2 #77")
    assert cut.endswith("Finished: SUCCESS")
    assert "characters of console output omitted" in cut
    assert TRUNCATION_MARKER.split("{")[0] in cut
    assert console_excerpt("short") == "short"


def test_a_file_first_created_by_a_rollback_never_says_all_checks_passed():
    github = FakeGitHub()
    append_record(github, "e.md", Record("Rollback", ("gate failed",)), "Record rollback",
                  Evidence(**EVIDENCE), key=pc.rollout_key(BUILD, "rollback-dev"))
    text = github.files["e.md"]
    assert "All manual checks and tests have passed" not in text
    assert "Not all manual checks and tests have passed" in text
    assert "All manual checks and tests have passed" in render(Evidence(**EVIDENCE))


def test_a_manual_commit_with_our_message_is_not_taken_as_ours():
    github = FakeGitHub()
    message = f"Add evidence for immutable image build {BUILD}"
    github.put_file("e.md", "a person's text with the previous build's ids", message)
    key = pc.rollout_key(BUILD, "evidence")
    sha = commit_once(github, "e.md", "our text", message, key=key)
    assert sha == "c1" and github.files["e.md"] == "our text"
    assert pc.carries_key(github.commits[1]["message"], key)
    # Rerun: ours is found by key AND content; nothing is committed again.
    assert commit_once(github, "e.md", "our text", message, key=key) == "c1"
    assert len(github.commits) == 2


def test_a_keyed_commit_with_other_content_is_not_ours():
    github = FakeGitHub()
    key = pc.rollout_key(BUILD, "evidence")
    github.put_file("e.md", "other content", f"Add evidence\n\n{pc.key_line(key)}")
    assert commit_once(github, "e.md", "our text", "Add evidence", key=key) == "c1"


def test_records_are_appended_once_per_key():
    github = FakeGitHub()
    github.put_file("e.md", render(Evidence(**EVIDENCE)), "initial")
    record = Record("Prod change approval", ("Approve by sre-approver",))
    key = pc.rollout_key(BUILD, "approval-ap-south")
    first = append_record(github, "e.md", record, "Record", Evidence(**EVIDENCE), key=key)
    again = append_record(github, "e.md", record, "Record", Evidence(**EVIDENCE), key=key)
    assert first == again and len(github.commits) == 2
    assert "All manual checks and tests have passed" in github.files["e.md"]


def test_check_approval_settings_refuses_what_the_board_cannot_meet():
    check_approval_settings({"required": True, "minNumApprovals": 1, "canReviewOwnRequest": False}, None)
    with pytest.raises(pc.UnsupportedApprovalSettings, match="minNumApprovals"):
        check_approval_settings({"required": True, "minNumApprovals": 3}, None)


def test_the_dag_wires_the_preconditions_into_the_writes():
    from image_rollout.plan import load_plan
    from image_rollout.rollout_dag import build_dag

    plan = load_plan("sandbox")
    dag = build_dag(plan)
    apply_canary = dag.get_task("ap_south.apply_change_request_ap_south")
    assert apply_canary.bake_target == "stage-south" and apply_canary.bake_seconds == 5
    assert apply_canary.approval_task_id == "ap_south.approve_ap_south"
    assert apply_canary.soak_region is None
    remaining = dag.get_task("remaining_prod.apply_change_request_remaining_prod")
    assert remaining.partial_kwargs.get("soak_region") == "ap-south"
    approve = dag.get_task("ap_south.approve_ap_south")
    assert approve.assigned_users == [{"id": "sre-approver", "name": "sre-approver"}]
    assert not approve.defaults
    assert dag.get_task("rollout_end.superseded").trigger_rule == "all_done"
    for task_id in ("ap_south.file_change_request_ap_south", "ap_south.record_approval_ap_south"):
        dag.get_task(task_id)


def test_the_approval_has_approvers_and_no_default():
    from image_rollout.operators.approval import ProdChangeApprovalOperator

    common = dict(task_id="a", file_task_id="f", target="ap-south", patching_channel="#c", subject="s")
    with pytest.raises(ValueError, match="approvers"):
        ProdChangeApprovalOperator(approvers=[], **common)
    with pytest.raises(ValueError, match="default"):
        ProdChangeApprovalOperator(approvers=["sre-approver"], defaults=["Approve"], **common)


def test_a_cleared_approval_of_a_withdrawn_train_fails_for_good(monkeypatch):
    """Reject withdraws the train (LaunchDarkly DELETE); an operator who clears the approval gets a named,
    final failure (no retries of a 404), and nothing is asked: there is no train left to start."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.sdk.exceptions import AirflowFailException

    from image_rollout.hooks import flags as flags_module
    from image_rollout.operators.approval import ProdChangeApprovalOperator

    asked = []

    class WithdrawnTrain:
        def get_change_request(self, request_id, *, missing_ok=False):
            assert missing_ok, "a deleted train read without missing_ok is a 404 the task retries"
            return None

    class TI:
        def xcom_pull(self, task_ids, key="return_value"):
            return {"request_id": "r1"} if task_ids == "ap_south.file_change_request_ap_south" else None

    monkeypatch.setattr(flags_module, "FlagsHook", WithdrawnTrain)
    op = ProdChangeApprovalOperator(task_id="approve_ap_south", file_task_id="ap_south.file_change_request_ap_south",
                                    target="ap-south", patching_channel="#c", subject="s", approvers=["sre-approver"])
    monkeypatch.setattr(ApprovalOperator, "execute", lambda self, context: asked.append(1))  # would ask
    with pytest.raises(AirflowFailException, match=r"change request r1 for ap-south no longer exists.*clear "
                                                   r"ap_south\.file_change_request_ap_south"):
        op.execute({"ti": TI(), "params": {"build_name": "533-1251-880-20211101"}})
    assert asked == []


def test_a_rerun_keeps_our_evidence_for_the_same_build_and_refuses_another_builds():
    """A rerun renders the step again with its own reload times: our keyed commit for the same build and
    image ids stands; a keyed commit holding another build's ids is someone else's."""
    github = FakeGitHub()
    key = pc.rollout_key(BUILD, "evidence")
    identity = [f"build {BUILD}", '"dev": "8495980"']
    github.put_file("e.md", f"build {BUILD}\n\"dev\": \"8495980\"\nreloaded at 10:00", f"Add\n\n{pc.key_line(key)}")
    assert commit_once(github, "e.md", f"build {BUILD}\n\"dev\": \"8495980\"\nreloaded at 11:00", "Add", key=key,
                       identity=identity) == "c0"
    assert len(github.commits) == 1
    github.put_file("f.md", f"build {BUILD}\n\"dev\": \"1111111\"", f"Add\n\n{pc.key_line(key)}")
    assert commit_once(github, "f.md", f"build {BUILD}\n\"dev\": \"8495980\"", "Add", key=key,
                       identity=identity) == "c2"
