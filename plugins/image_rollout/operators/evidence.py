"""Evidence tasks: the runbook's train evidence file committed to the team repo, and the prod start
decision recorded in it. How a commit is made once is ``image_rollout.evidence_commits``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from image_rollout import lazy_module
from image_rollout.contracts import approver_name, iso
from image_rollout.operators.base import RolloutOperator

if TYPE_CHECKING:
    from image_rollout.payloads import EvidenceCommit

ev = lazy_module("image_rollout.evidence_file")
pc = lazy_module("image_rollout.preconditions")

Mode = Literal["initial", "stage_reloads"]


class CommitEvidenceOperator(RolloutOperator):
    """Commit the evidence file (``initial``) or update it with the stage reloads (``stage_reloads``).

    :param mode: which runbook step this is.
    """

    def __init__(self, *, mode: Mode, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mode = mode

    def execute(self, context, event: dict | None = None) -> EvidenceCommit:
        from image_rollout.evidence_commits import commit_once, evidence_for

        build = self.build_record(context)
        self.guard_build(context, build["name"])
        sections = ("dev", "prestage") if self.mode == "initial" else ("dev", "prestage", "stage")
        evidence = evidence_for(self.plan, context, build, sections)
        path = self.plan.evidence_path(build["name"])
        message = (f"Add evidence for immutable image build {build['name']}" if self.mode == "initial"
                   else f"Add stage reloads to evidence for immutable image build {build['name']}")
        github = self.github(context)
        step = "evidence" if self.mode == "initial" else "evidence-stage-reloads"
        text = ev.render(evidence)
        identity = [line for line in text.splitlines() if build["name"] in line
                    or any(image_id in line for image_id in build["images"].values())]
        sha = commit_once(github, path, text, message, key=pc.rollout_key(build["name"], step), identity=identity)
        url = github.blob_url(path, sha)
        self.say(f"Evidence for {build['name']} committed: {url}")
        return {"path": path, "sha": sha, "url": url, "mode": self.mode}


class RecordApprovalOperator(RolloutOperator):
    """Record in the evidence who took the prod start decision in Airflow, when, and the choice.

    :param approval_task_id: the HITL approval task.
    :param file_task_id: the task that filed the change request.
    """

    def __init__(self, *, approval_task_id: str, file_task_id: str, target: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.approval_task_id = approval_task_id
        self.file_task_id = file_task_id
        self.target = target

    def execute(self, context, event: dict | None = None) -> dict:
        from image_rollout.evidence_commits import append_to_evidence

        build = self.build_record(context)
        self.hold_if_held(context, build["name"])
        approval = self.pull(context, self.approval_task_id) or {}
        filed = self.pull(context, self.file_task_id) or {}
        if approval.get("already_serving"):
            return {"already_recorded": True, **{k: approval.get(k) for k in ("approver", "approved_at", "choice")}}
        who = approver_name(approval.get("responded_by_user"), default=None)
        when = approval.get("responded_at")
        when = iso(when) if hasattr(when, "astimezone") else (str(when) if when else None)
        choice = (approval.get("chosen_options") or [None])[0]
        refused = pc.check_start_decision(approval, approvers=self.plan.approvers.users,
                                          triggering_user=self.triggering_user(context))
        board = approval.get("board") or {}
        lines = (
            f"Start decision for {self.target}: {choice} by {who} at {when} (Airflow approval)",
            f"Change request {filed.get('request_id')} approved by the change board"
            + (f" ({', '.join(board.get('reviewers') or [])})" if board.get("reviewers") else ""),
            f"Evidence hash on the change request: {filed.get('evidence_sha')}",
            f"Triggered by {self.triggering_user(context) or 'unknown'}; the decision is valid: "
            + ("yes" if refused is None else f"no ({refused.reason})"),
        )
        path = self.plan.evidence_path(build["name"])
        message = f"Record prod start decision for immutable image build {build['name']} on {self.target}"
        sha = append_to_evidence(self.github(context), self.plan, context, build, "Prod change approval", lines,
                                 message, key=pc.rollout_key(build["name"], f"approval-{self.target}"))
        return {"path": path, "sha": sha, "approver": who, "approved_at": when, "choice": choice,
                "valid": refused is None, "refused": None if refused is None else refused.reason}
