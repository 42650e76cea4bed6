"""Evidence commits: the runbook's train evidence file in the team repo, and records appended to it.

Every commit has a message unique to its step; a step whose commit already exists (a retry
after a timeout that did reach GitHub, a cleared task) returns that commit instead of
committing again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from image_rollout.evidence import Evidence, Record, escape_markdown, reloads_from, render
from image_rollout.operators.base import RolloutOperator, github_hook, iso, utcnow
from image_rollout.plan import RolloutPlan

Mode = Literal["initial", "stage_reloads"]

if TYPE_CHECKING:
    from image_rollout.hooks.github import GitHubEvidenceHook


def reload_task_id(stage_id: str) -> str:
    return f"{stage_id}.reload_check_{stage_id}"


def evidence_for(plan: RolloutPlan, context, build: dict, sections: tuple[str, ...]) -> Evidence:
    """The evidence for the reload sections that have passed so far."""
    found: dict[str, list] = {"dev": [], "prestage": [], "stage": []}
    for stage in plan.stages:
        if stage.evidence_section in sections:
            result = context["ti"].xcom_pull(task_ids=reload_task_id(stage.id)) or {}
            found[stage.evidence_section] = reloads_from(result.get("reloads", []))
    return Evidence(
        build_name=build["name"], image_ids=build["images"], console_url=build["console_url"],
        console_output=build["console_text"], razee_link=plan.evidence.razee_link,
        concept_doc=plan.evidence.concept_doc, dev_reloads=found["dev"], prestage_reloads=found["prestage"],
        stage_reloads=found["stage"],
    )


def commit_once(github: GitHubEvidenceHook, path: str, text: str, message: str) -> str:
    """Commit ``text`` with ``message`` unless a commit with that message exists for the path."""
    for commit in github.list_commits(path):
        if commit.get("commit", {}).get("message") == message:
            return commit["sha"]
    return github.put_file(path, text, message)


def append_record(github: GitHubEvidenceHook, path: str, record: Record, message: str,
                  fallback: Evidence) -> str:
    """Append a section to the evidence file (created from ``fallback`` if it does not exist yet)."""
    for commit in github.list_commits(path):
        if commit.get("commit", {}).get("message") == message:
            return commit["sha"]
    current = github.get_file(path)
    base = current[0] if current else render(fallback)
    lines = "".join(f"- {escape_markdown(line)}\n" for line in record.lines)
    text = f"{base.rstrip(chr(10))}\n\n### {escape_markdown(record.title)}\n\n{lines}"
    return github.put_file(path, text, message)


class CommitEvidenceOperator(RolloutOperator):
    """Commit the evidence file (``initial``) or update it with the stage reloads (``stage_reloads``).

    :param mode: which runbook step this is.
    """

    def __init__(self, *, mode: Mode, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mode = mode

    def execute(self, context) -> dict:
        build = self.build(context)
        self.stop_if_superseded(context, build["name"])
        sections = ("dev", "prestage") if self.mode == "initial" else ("dev", "prestage", "stage")
        evidence = evidence_for(self.plan, context, build, sections)
        path = self.plan.evidence_path(build["name"])
        message = (f"Add evidence for immutable image build {build['name']}" if self.mode == "initial"
                   else f"Add stage reloads to evidence for immutable image build {build['name']}")
        github = github_hook()
        sha = commit_once(github, path, render(evidence), message)
        url = github.blob_url(path, sha)
        self.say(f"Evidence for {build['name']} committed: {url}")
        return {"path": path, "sha": sha, "url": url, "mode": self.mode}


class RecordApprovalOperator(RolloutOperator):
    """Record in the evidence who approved the prod change in Airflow, before it is applied.

    :param approval_task_id: the HITL approval task.
    :param file_task_id: the task that filed the change request.
    """

    def __init__(self, *, approval_task_id: str, file_task_id: str, target: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.approval_task_id = approval_task_id
        self.file_task_id = file_task_id
        self.target = target

    def execute(self, context) -> dict:
        build = self.build(context)
        approval = self.pull(context, self.approval_task_id) or {}
        filed = self.pull(context, self.file_task_id) or {}
        user = (approval.get("responded_by_user") or {})
        who = user.get("name") or user.get("id") or "unknown"
        when = approval.get("responded_at") or utcnow()
        when = iso(when) if hasattr(when, "astimezone") else str(when)
        record = Record("Prod change approval", (
            f"{self.target} change request {filed.get('request_id')} approved in Airflow by {who} at {when}",
            f"Evidence hash on the change request: {filed.get('evidence_sha')}",
        ))
        path = self.plan.evidence_path(build["name"])
        message = f"Record prod approval of immutable image build {build['name']} for {self.target}"
        github = github_hook()
        sha = append_record(github, path, record, message,
                            evidence_for(self.plan, context, build, ("dev", "prestage", "stage")))
        return {"path": path, "sha": sha, "approver": who, "approved_at": str(when)}
