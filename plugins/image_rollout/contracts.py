"""What the rollout's tasks agree on: task ids, times, and the shared constants (the payloads they pass
are typed in ``image_rollout.payloads``).

One home, so renaming a task is one edit here: the DAG builders (``rollout_dag``, ``backout_dag``)
create tasks under these ids, and the operators, the rollback, the backout and the status page
(``rollout_status``) read XCom and task states under the same ids.

A stage's tasks sit in a TaskGroup named after the stage (``<stage id>.<task>``); the builders
pass :func:`local_id` of an id to the operator they create inside the group.

Imported when a DAG file is parsed: standard library only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from image_rollout.plan import RolloutPlan, StagePlan

# -- constants -------------------------------------------------------------------------------------

#: The rollout DAG; Jenkins and the watcher start one run per build.
ROLLOUT_DAG_ID = "immutable_image_rollout"
#: The backout DAG (the runbook's "Rollback to previous version", on demand).
BACKOUT_DAG_ID = "immutable_image_backout"
#: The keys of a build's image map (Jenkins ``image_ids.json``), one image id per environment.
IMAGE_KEYS = ("dev", "prod", "prodfr2", "stage")

# Python's ``\d`` also matches non-ASCII digits ("٣") and ``$`` matches before a trailing newline, so
# the patterns are ASCII digits only and used with ``re.fullmatch``. Kept as text: ``re`` compiles (and
# caches) a pattern at its first use, which is when a task runs, not in every parse of the DAG files.
#: An oceanPI/immutable_image build name, ``NNN-NNNN-NNN-YYYYMMDD``.
BUILD_NAME_PATTERN = r"[0-9]+-[0-9]+-[0-9]+-[0-9]{8}"
#: An image id: 1-12 ASCII digits.
IMAGE_ID_PATTERN = r"[0-9]{1,12}"
# The same rules for the Params JSON schema (checked by Python's ``re.search`` in Airflow and by the
# browser's RegExp in the trigger form): ``(?!\n)$`` refuses a trailing newline in both dialects.
BUILD_NAME_SCHEMA_PATTERN = rf"^{BUILD_NAME_PATTERN}(?!\n)$"
IMAGE_ID_SCHEMA_PATTERN = rf"^{IMAGE_ID_PATTERN}(?!\n)$"


def run_id_for(build_name: str) -> str:
    """The DAG run id of a build's rollout: a second trigger for the same build gets 409."""
    return f"rollout__{build_name}"


# -- time ------------------------------------------------------------------------------------------

def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """``2026-11-25T12:00:00.123456Z``: how the rollout records a time in XCom and evidence (naive = UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str | datetime) -> datetime:
    """A time the rollout recorded (:func:`iso`, or any ISO-8601 text) or a datetime, as an aware datetime.

    A naive time is taken as UTC. Anything else raises ``ValueError``/``TypeError``: a time that must be
    there is never guessed. For data that may be missing or malformed use :func:`parse_time_or_none`.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        raise TypeError(f"not a time: {value!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def from_ms(value: Any) -> datetime | None:
    """LaunchDarkly's epoch milliseconds (``appliedDate``) as an aware datetime; None when missing or not a time."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def parse_time_or_none(value: Any) -> datetime | None:
    """:func:`parse_time`, but None for a missing or unreadable value (records read from other systems)."""
    if not isinstance(value, datetime) and (not isinstance(value, str) or not value):
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


# -- task ids: the rollout DAG ---------------------------------------------------------------------

#: The TaskGroup before the plan's stages, and the one after them.
BUILD_GROUP = "build_verification"
END_GROUP = "rollout_end"


def _in(group: str, name: str) -> str:
    return f"{group}.{name}"


def local_id(task_id: str) -> str:
    """The id a task is created with inside its TaskGroup (``promote_dev_south`` of ``dev_south.promote_dev_south``)."""
    return task_id.split(".", 1)[1] if "." in task_id else task_id


VERIFY_TASK = _in(BUILD_GROUP, "verify_build")
PLAN_TASK = _in(BUILD_GROUP, "plan_rollout")
PROCEED_TASK = _in(BUILD_GROUP, "proceed_unless_dry_run")
FLEET_TASK = _in(END_GROUP, "verify_flag_state")
ROLLBACK_TASK = _in(END_GROUP, "rollback")
SUPERSEDED_TASK = _in(END_GROUP, "superseded")
COMPLETE_TASK = _in(END_GROUP, "rollout_complete")


# A promote stage's tasks.
def promote_task_id(stage: StagePlan) -> str:
    """A direct flag write (or a change request when the environment requires approvals)."""
    return _in(stage.id, f"promote_{stage.id}")


def file_request_task_id(stage: StagePlan) -> str:
    """Files the stage's change requests (:class:`FiledChangeRequest`)."""
    return _in(stage.id, f"file_change_request_{stage.id}")


def apply_request_task_id(stage: StagePlan) -> str:
    """Applies the stage's approved change requests (:class:`image_rollout.payloads.Promotion`)."""
    return _in(stage.id, f"apply_change_request_{stage.id}")


def approve_task_id(stage: StagePlan) -> str:
    """The prod start decision (Human-in-the-loop)."""
    return _in(stage.id, f"approve_{stage.id}")


def record_approval_task_id(stage: StagePlan) -> str:
    """Records the start decision in the evidence file."""
    return _in(stage.id, f"record_approval_{stage.id}")


def reload_check_task_id(stage: StagePlan | str) -> str:
    """The reload gate on the stage's test carrier (a stage or its id)."""
    stage_id = stage if isinstance(stage, str) else stage.id
    return _in(stage_id, f"reload_check_{stage_id}")


# The other stages' tasks.
def evidence_task_id(stage: StagePlan) -> str:
    """The evidence commit of an ``evidence_commit`` or ``evidence_update`` stage (:class:`EvidenceCommit`)."""
    return _in(stage.id, "commit_evidence" if stage.kind == "evidence_commit" else "update_evidence")


def bake_until_task_id(stage: StagePlan) -> str:
    """Records when the bake ends (an ISO time)."""
    return _in(stage.id, "bake_until")


def wait_bake_task_id(stage: StagePlan) -> str:
    """Waits (deferred) until the bake ends: the bake's gate."""
    return _in(stage.id, "wait_bake")


def soak_gate_task_id(stage: StagePlan) -> str:
    """The canary soak gate (:class:`SoakVerdict`)."""
    return _in(stage.id, "soak_gate")


def monitor_adoption_task_id(stage: StagePlan) -> str:
    """Reads the image-count reports until adoption passes the threshold."""
    return _in(stage.id, "monitor_adoption")


# Lookups over the plan.
def stage_of(plan: RolloutPlan, target: str) -> StagePlan:
    """The stage that promotes ``target`` (a plan names each target once)."""
    for stage in plan.stages:
        if any(t.target == target for t in stage.targets):
            return stage
    raise KeyError(f"no stage of plan {plan.name!r} promotes {target!r}")


def promotion_task_id(plan_or_stage: RolloutPlan | StagePlan, target: str | None = None) -> str:
    """The task whose XCom holds the promotion time of a stage (or of the stage promoting ``target``)."""
    stage = stage_of(plan_or_stage, target) if target is not None else plan_or_stage
    return apply_request_task_id(stage) if stage.change_request else promote_task_id(stage)


def promotion_task_ids(stage: StagePlan) -> list[str]:
    """Tasks whose XCom records a promotion of the stage's targets (apply first, then the filing)."""
    if stage.kind != "promote":
        return []
    if stage.change_request:
        return [apply_request_task_id(stage), file_request_task_id(stage)]
    return [promote_task_id(stage)]


def gate_task_id(stage: StagePlan) -> str | None:
    """The stage's gate, if it has one: it vouches for the targets promoted before it."""
    if stage.carrier:
        return reload_check_task_id(stage)
    if stage.kind == "bake":
        return wait_bake_task_id(stage)
    if stage.kind == "soak_gate":
        return soak_gate_task_id(stage)
    return None


def gate_task_ids(plan: RolloutPlan) -> list[str]:
    return [t for t in (gate_task_id(s) for s in plan.stages) if t]


def soak_task_id(plan: RolloutPlan) -> str:
    """The plan's canary soak gate (a plan has one)."""
    return soak_gate_task_id(next(s for s in plan.stages if s.kind == "soak_gate"))


def adoption_task_id(plan: RolloutPlan) -> str | None:
    """The plan's adoption monitor, None when the plan has no adoption stage."""
    stage = next((s for s in plan.stages if s.kind == "adoption"), None)
    return monitor_adoption_task_id(stage) if stage else None


# -- task ids: the backout DAG (no TaskGroups) -----------------------------------------------------
BACKOUT_RESOLVE_TASK = "resolve_backout"
BACKOUT_PROCEED_TASK = "proceed_unless_dry_run"
BACKOUT_FILE_TASK = "file_backout_requests"
BACKOUT_APPROVE_TASK = "approve_backout"
BACKOUT_RESTORE_TASK = "restore_targets"


# -- people ----------------------------------------------------------------------------------------

def approver_name(user: Any, default: str | None = "unknown") -> str | None:
    """Who answered a Human-in-the-loop request (its ``responded_by_user``): the name, else the id."""
    user = user if isinstance(user, dict) else {}
    return user.get("name") or user.get("id") or default
