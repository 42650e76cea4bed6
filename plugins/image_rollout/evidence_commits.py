"""Writing the runbook's train evidence file in the team repo: commit it once, append records to it.

Every commit has a message unique to its step and carries the step's key; a step whose commit
already exists (a retry after a timeout that did reach GitHub, a cleared task) returns that commit
instead of committing again.

Kept apart from the operators (``operators.evidence``) so the guards every write runs
(``operators.base``: a supersession, an override, a drift decision) can record in the evidence
without importing the operators that import them. Only a running task needs it: the operators
import it where they write, so parsing a DAG file does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from image_rollout import preconditions as pc
from image_rollout.contracts import reload_check_task_id
from image_rollout.evidence_file import Evidence, Record, escape_markdown, reloads_from, render
from image_rollout.plan import RolloutPlan

if TYPE_CHECKING:
    from image_rollout.hooks.github import GitHubEvidenceHook
    from image_rollout.payloads import BuildRecord

#: The reload sections a record written after the stage reloads may show.
ALL_SECTIONS = ("dev", "prestage", "stage")


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


def append_to_evidence(github: GitHubEvidenceHook, plan: RolloutPlan, context, build: BuildRecord, title: str,
                       lines: Sequence[str], message: str, *, key: str) -> str:
    """Append a ``title`` section of ``lines`` to the build's evidence file once per key (created, if
    missing, from the reloads recorded so far). What the guards and the rollback call."""
    return append_record(github, plan.evidence_path(build["name"]), Record(title, tuple(lines)), message,
                         evidence_for(plan, context, build, ALL_SECTIONS), key=key)
