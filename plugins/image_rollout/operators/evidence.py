"""Evidence commits: the runbook's train evidence file in the team repo, and records appended to it.

Every commit has a message unique to its step; a step whose commit already exists (a retry
after a timeout that did reach GitHub, a cleared task) returns that commit instead of
committing again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from image_rollout import preconditions as pc
from image_rollout.contracts import EvidenceCommit, approver_name, iso, reload_check_task_id
from image_rollout.evidence import Evidence, Record, escape_markdown, reloads_from, render
from image_rollout.operators.base import RolloutOperator, github_hook
from image_rollout.plan import RolloutPlan

Mode = Literal["initial", "stage_reloads"]

if TYPE_CHECKING:
    from image_rollout.hooks.github import GitHubEvidenceHook


def evidence_for(plan: RolloutPlan, context, build: dict, sections: tuple[str, ...]) -> Evidence:
    """The evidence for the reload sections that have passed so far."""
    found: dict[str, list] = {"dev": [], "prestage": [], "stage": []}
    for stage in plan.stages:
        if stage.evidence_section in sections:
            result = context["ti"].xcom_pull(task_ids=reload_check_task_id(stage)) or {}
            found[stage.evidence_section] = reloads_from(result.get("reloads", []))
    return Evidence(
        build_name=build["name"], image_ids=build["images"], console_url=build["console_url"],
        console_output=build["console_text"], razee_link=plan.evidence.razee_link,
        concept_doc=plan.evidence.concept_doc, dev_reloads=found["dev"], prestage_reloads=found["prestage"],
        stage_reloads=found["stage"],
    )


def _message(message: str, key: str) -> str:
    return f"{message}\n\n{pc.key_line(key)}"


def find_ours(github: GitHubEvidenceHook, path: str, key: str, matches) -> str | None:
    """Our commit for this step: the key trailer AND content we meant to write (issue 9 item 7).

    ``matches(content)`` says whether the file at a keyed commit is what this step writes. A commit
    with our message but without the key, or with other content, is someone else's.
    """
    for commit in github.find_commit(path, key):
        content = github.file_at(path, commit["sha"])
        if content is not None and matches(content):
            return commit["sha"]
    return None


def commit_once(github: GitHubEvidenceHook, path: str, text: str, message: str, *, key: str,
                identity: Sequence[str] = ()) -> str:
    """Commit ``text`` unless our keyed commit of it exists for the path.

    Ours is exactly ``text``, or, for a rerun that renders the same step again with its own reload
    times, a file carrying every ``identity`` line (the build name and its image ids): the evidence
    this step already committed for this build stands, and is not committed twice.
    """
    def matches(content: str) -> bool:
        return content == text or bool(identity) and all(line in content for line in identity)

    found = find_ours(github, path, key, matches)
    if found:
        return found
    return github.put_file(path, text, _message(message, key))


def record_text(record: Record) -> str:
    lines = "".join(f"- {escape_markdown(line)}\n" for line in record.lines)
    return f"### {escape_markdown(record.title)}\n\n{lines}"


def append_record(github: GitHubEvidenceHook, path: str, record: Record, message: str,
                  fallback: Evidence, *, key: str) -> str:
    """Append a section to the evidence file, once per key.

    A file that does not exist yet is created from ``fallback`` WITHOUT the sentence that all checks
    passed: a file first written by a rollback or another record never claims that.
    """
    section = record_text(record)
    found = find_ours(github, path, key, lambda content: section in content)
    if found:
        return found
    current = github.get_file(path)
    if current:
        base = current[0]
    else:
        fallback.checks_passed = False
        base = render(fallback)
    text = f"{base.rstrip(chr(10))}\n\n{section}"
    return github.put_file(path, text, _message(message, key))


class CommitEvidenceOperator(RolloutOperator):
    """Commit the evidence file (``initial``) or update it with the stage reloads (``stage_reloads``).

    :param mode: which runbook step this is.
    """

    def __init__(self, *, mode: Mode, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mode = mode

    def execute(self, context, event: dict | None = None) -> EvidenceCommit:
        build = self.build(context)
        self.guard_build(context, build["name"])
        sections = ("dev", "prestage") if self.mode == "initial" else ("dev", "prestage", "stage")
        evidence = evidence_for(self.plan, context, build, sections)
        path = self.plan.evidence_path(build["name"])
        message = (f"Add evidence for immutable image build {build['name']}" if self.mode == "initial"
                   else f"Add stage reloads to evidence for immutable image build {build['name']}")
        github = github_hook()
        step = "evidence" if self.mode == "initial" else "evidence-stage-reloads"
        text = render(evidence)
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
        build = self.build(context)
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
        github = github_hook()
        sha = append_record(github, path, Record("Prod change approval", lines), message,
                            evidence_for(self.plan, context, build, ("dev", "prestage", "stage")),
                            key=pc.rollout_key(build["name"], f"approval-{self.target}"))
        return {"path": path, "sha": sha, "approver": who, "approved_at": when, "choice": choice,
                "valid": refused is None, "refused": None if refused is None else refused.reason}
