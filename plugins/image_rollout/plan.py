"""The rollout plan: the runbook's stage order, targets, counts, waits and channels as data.

The DAG is generated from a plan file under ``include/plans/``. Production and the
sandbox use the same stages; the sandbox plan only shortens the waits. A plan is
validated on load, and a bad plan is refused with a message that names the field.

The dag-processor parses the DAG files in a fresh process every time, and each parse loads the
plan. The plan's parts are ``msgspec`` structs: their classes are built in C (pydantic took about
5 ms of every parse to build its models' classes, even with the validators deferred), and a load
reads, types and checks the file in one pass (under a millisecond in a fresh process), so nothing
is cached. ``msgspec`` is what Airflow's task SDK speaks to its supervisor with; the dag-processor
has it imported before it forks a parser.
"""

# ruff: noqa: I002  no `from __future__ import annotations` here: msgspec reads the fields' types at the
# first load of every parse, and string annotations would each be compiled then.

import math
import os
import re
import sys
from pathlib import Path

import msgspec
from msgspec import Struct, field

from image_rollout.contracts import IMAGE_KEYS

PLANS_DIR = Path(__file__).resolve().parents[2] / "include" / "plans"
PLAN_ENV = "ROLLOUT_PLAN"
#: The key of a DAG's ``default_args`` that names the plan it was built from (its ``source``).
PLAN_DEFAULT_ARG = "rollout_plan"
#: Longest unit first: "5ms" is milliseconds, not "5m" followed by "s".
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Names are checked with sets, not regular expressions: a pattern is compiled afresh in every parse of
# the DAG files (a fresh process), and these checks run at every load.
_DIGITS = frozenset("0123456789")
_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")
_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _spelled(value: str, first: frozenset, rest: frozenset, max_len: int | None = None) -> bool:
    """``value`` is 1 to ``max_len`` characters, the first from ``first`` and the others from ``rest``."""
    return 0 < len(value) <= (max_len or len(value)) and value[0] in first and rest.issuperset(value[1:])


def is_target_name(value: str) -> bool:
    """``[a-z0-9][a-z0-9-]*``"""
    return _spelled(value, _LOWER | _DIGITS, _LOWER | _DIGITS | {"-"})


def is_stage_id(value: str) -> bool:
    """``[a-z][a-z0-9_]*``"""
    return _spelled(value, _LOWER, _LOWER | _DIGITS | {"_"})


def is_airflow_user(value: str) -> bool:
    """``[A-Za-z0-9][A-Za-z0-9._@-]{0,99}``"""
    return _spelled(value, _LOWER | _UPPER | _DIGITS, _LOWER | _UPPER | _DIGITS | frozenset("._@-"), 100)


def is_slack_user(value: str) -> bool:
    """``[UW][A-Z0-9]{2,20}``"""
    return len(value) >= 3 and _spelled(value, frozenset("UW"), _UPPER | _DIGITS, 21)


class PlanError(ValueError):
    """A rollout plan file that cannot be used."""


def parse_duration(value: str | int | float) -> float:
    """Return seconds for ``"24h"``, ``"90m"``, ``"5s"``, ``"250ms"`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative: {value!r}")
        return float(value)
    text = str(value).strip()
    unit = next((u for u in _UNITS if text.endswith(u)), None)
    number = text[: -len(unit)].rstrip() if unit else ""
    whole, _, fraction = number.partition(".")
    if not whole or not _DIGITS.issuperset(whole) or not _DIGITS.issuperset(fraction) or number.endswith("."):
        raise ValueError(f"not a duration (use e.g. '24h', '30m', '5s'): {value!r}")
    return float(number) * _UNITS[unit]


class Seconds(float):
    """A duration in seconds; the plan file gives ``"24h"``, ``"30m"``, ``"5s"``, ``"250ms"`` or seconds.

    Only while a plan is read: ``load_plan`` hands out plain floats (``_plain_floats``), because values of
    the plan end up in the parsed DAG, and the dag-processor's msgpack encoder refuses a float subclass.
    """


def _decode_hook(kind: type, value: object) -> object:
    if kind is Seconds:
        return Seconds(parse_duration(value))  # a ValueError names the field (msgspec adds the path)
    raise NotImplementedError(kind)


class _Strict(Struct, frozen=True, forbid_unknown_fields=True):
    """A part of the plan: read-only, and a key the file has that the plan does not know is refused.
    (Fields without a default come first: ``kw_only`` is not inherited.)

    Ranges and choices are checked in ``__post_init__`` rather than declared with ``typing.Annotated`` and
    ``Literal``: building those typing objects cost each parse more than the whole check.
    """


def _in_range(where: str, value: float | None, *, least: float | None = None, above: float | None = None,
              most: float | None = None) -> None:
    """Refuse a number outside its range (None: not given), naming the field."""
    if value is None:
        return
    if least is not None and value < least:
        raise ValueError(f"{where} must be at least {least:g}, not {value:g}")
    if above is not None and value <= above:
        raise ValueError(f"{where} must be more than {above:g}, not {value:g}")
    if most is not None and value > most:
        raise ValueError(f"{where} must be at most {most:g}, not {value:g}")


def _one_of(where: str, value: str | None, choices: tuple[str, ...]) -> None:
    """Refuse a value that is not one of ``choices`` (None: not given), naming the field."""
    if value is not None and value not in choices:
        raise ValueError(f"{where} {value!r} is not one of {list(choices)}")


STAGE_KINDS = ("promote", "evidence_commit", "evidence_update", "bake", "soak_gate", "adoption")


class FlagPlan(_Strict):
    project_key: str
    environment_key: str
    flag_key: str


class JenkinsPlan(_Strict):
    image_job: str
    upstream_job: str
    report_job: str
    report_account: str
    rebuilds_on_timeout: int
    poll: Seconds

    def __post_init__(self) -> None:
        _in_range("jenkins.rebuilds_on_timeout", self.rebuilds_on_timeout, least=0, most=5)


class EvidencePlan(_Strict):
    directory: str
    razee_link: str
    concept_doc: str

    def __post_init__(self) -> None:
        if self.directory.startswith("/") or ".." in self.directory.split("/"):
            raise ValueError(f"evidence.directory {self.directory!r} must be a relative path inside the repo")
        msgspec.structs.force_setattr(self, "directory", self.directory.strip("/"))


class ChangeRequestPlan(_Strict):
    security_impact: str
    backout_plan: str
    poll: Seconds
    timeout: Seconds


class ReloadPlan(_Strict):
    required: int
    max_failed: int
    grace: Seconds
    timeout: Seconds
    poll: Seconds

    def __post_init__(self) -> None:
        _in_range("reloads.required", self.required, least=1)
        _in_range("reloads.max_failed", self.max_failed, least=0)


class SoakPlan(_Strict):
    """The canary soak. ``poll``: the full read (LaunchDarkly, chlorine, PagerDuty); ``incident_poll``
    (default ``poll``): PagerDuty alone in between, so an incident rolls the canary back within about
    ``incident_poll`` at a fixed PagerDuty budget (``calls_per_day``)."""

    region: str
    min_duration: Seconds
    min_autorecovery_reloads: int
    timeout: Seconds
    poll: Seconds
    incident_title: str
    incident_poll: Seconds | None = None

    def __post_init__(self) -> None:
        _in_range("soak.min_autorecovery_reloads", self.min_autorecovery_reloads, least=1)
        _in_range("soak.poll", self.poll, above=0)
        _in_range("soak.incident_poll", self.incident_poll, above=0)
        if self.timeout < self.min_duration:
            raise ValueError("soak.timeout must be at least soak.min_duration")
        if self.incident_poll is not None and self.incident_poll > self.poll:
            raise ValueError("soak.incident_poll must not be longer than soak.poll")

    def calls_per_day(self) -> dict[str, int]:
        """Requests a soak day costs each system (one page per list; PagerDuty is asked at every poll)."""
        full = math.ceil(86400 / self.poll)
        return {"pagerduty": math.ceil(86400 / (self.incident_poll or self.poll)), "chlorine": full,
                "launchdarkly": 2 * full}


class GatesPlan(_Strict):
    """Inconclusive is not failed: how long a gate's data may stay unreadable before a person is asked
    to choose "Roll back" or "Keep waiting" (the gate holds and escalates meanwhile)."""

    inconclusive_timeout: Seconds

    def __post_init__(self) -> None:
        _in_range("gates.inconclusive_timeout", self.inconclusive_timeout, least=120)


class AdoptionPlan(_Strict):
    threshold_percent: float
    timeout: Seconds
    poll: Seconds

    def __post_init__(self) -> None:
        _in_range("adoption.threshold_percent", self.threshold_percent, above=0, most=100)


class FreezePlan(_Strict):
    variable: str
    poll: Seconds


class SlackPlan(_Strict):
    progress_channel: str
    patching_channel: str




class ApproversPlan(_Strict):
    """Who may give the prod start decision: Airflow user ids (the HITL request's assigned users).

    Never the identity that triggered the run (checked again before the write), and no default answer.
    """

    users: tuple[str, ...]
    #: Airflow user id -> Slack user id (``U…``/``W…``): who may answer the decision with the Slack buttons.
    #: An approver without one decides in the Airflow UI only; a Slack user not listed here is no approver.
    slack_user_ids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.users:
            raise ValueError("approvers.users must name at least one Airflow user")
        for user in self.users:
            if not is_airflow_user(user):
                raise ValueError(f"approver {user!r} is not an Airflow user id")
        seen: dict[str, str] = {}
        for user, slack_id in self.slack_user_ids.items():
            if user not in self.users:
                raise ValueError(f"slack_user_ids: {user!r} is not one of the approvers {list(self.users)}")
            if not isinstance(slack_id, str) or not is_slack_user(slack_id):
                raise ValueError(f"slack_user_ids: {slack_id!r} (for {user}) is not a Slack user id like U012AB3CD")
            if slack_id in seen:
                raise ValueError(f"slack_user_ids: Slack user {slack_id} is given for both {seen[slack_id]} and {user}")
            seen[slack_id] = user

    def airflow_user_for_slack(self, slack_user_id: str | None) -> str | None:
        """The approver a Slack user acts as, or None for a Slack user who is not mapped to one."""
        for user, slack_id in self.slack_user_ids.items():
            if slack_id == slack_user_id:
                return user
        return None




class TargetPlan(_Strict):
    target: str
    image_key: str

    def __post_init__(self) -> None:
        _one_of(f"target {self.target}: image_key", self.image_key, IMAGE_KEYS)
        if not is_target_name(self.target):
            raise ValueError(f"target {self.target!r} must be lower-case letters, digits and dashes")


class StagePlan(_Strict):
    """One step of the runbook: a promotion (with its gates) or an evidence/bake/soak/monitoring step."""

    id: str
    kind: str
    targets: tuple[TargetPlan, ...] = ()
    carrier: str | None = None
    evidence_section: str | None = None
    change_request: bool = False
    evidence_hash: str | None = None
    human_approval: bool = False
    after: str | None = None
    wait: Seconds | None = None

    def __post_init__(self) -> None:
        if not is_stage_id(self.id):
            raise ValueError(f"stage id {self.id!r} must be snake_case")
        _one_of(f"stage {self.id}: kind", self.kind, STAGE_KINDS)
        _one_of(f"stage {self.id}: evidence_section", self.evidence_section, ("dev", "prestage", "stage"))
        _one_of(f"stage {self.id}: evidence_hash", self.evidence_hash, ("first", "latest"))
        if self.kind == "promote":
            if not self.targets:
                raise ValueError(f"stage {self.id}: a promote stage needs targets")
            if self.carrier and len(self.targets) != 1:
                raise ValueError(f"stage {self.id}: a reload check needs exactly one target")
            if self.carrier and self.evidence_section is None:
                raise ValueError(f"stage {self.id}: a reload check needs evidence_section dev, prestage or stage")
            if self.change_request and self.evidence_hash is None:
                raise ValueError(f"stage {self.id}: a change request needs evidence_hash 'first' or 'latest'")
            if self.human_approval and not self.change_request:
                raise ValueError(f"stage {self.id}: human_approval needs change_request")
        elif self.targets or self.carrier or self.change_request or self.human_approval:
            raise ValueError(f"stage {self.id}: only promote stages have targets, carriers or change requests")
        if self.kind == "bake" and (self.after is None or self.wait is None):
            raise ValueError(f"stage {self.id}: a bake needs 'after' (a stage id) and 'wait'")


class RolloutPlan(_Strict):
    name: str
    flag: FlagPlan
    jenkins: JenkinsPlan
    evidence: EvidencePlan
    change_request: ChangeRequestPlan
    reloads: ReloadPlan
    soak: SoakPlan
    gates: GatesPlan
    adoption: AdoptionPlan
    freeze: FreezePlan
    slack: SlackPlan
    approvers: ApproversPlan
    airflow_base_url: str
    stages: tuple[StagePlan, ...]
    retry_delay: Seconds = Seconds(120.0)
    #: What ``load_plan`` was given for this plan (a plan name such as ``default``, or a file's path); set by
    #: ``load_plan``, not by the file. The DAG's operators load the plan again from it when they run.
    source: str | None = None

    def __post_init__(self) -> None:
        ids = [s.id for s in self.stages]
        if len(set(ids)) != len(ids):
            raise ValueError(f"stage ids must be unique: {ids}")
        targets = [t.target for s in self.stages for t in s.targets]
        if len(set(targets)) != len(targets):
            raise ValueError("a target appears in more than one stage")
        if self.soak.region not in targets:
            raise ValueError(f"soak.region {self.soak.region!r} is not a target of the plan")
        seen: list[str] = []
        committed = False
        for stage in self.stages:
            if stage.kind == "evidence_commit":
                committed = True
            if stage.kind == "evidence_update" and not committed:
                raise ValueError(f"stage {stage.id}: evidence_update before evidence_commit")
            if stage.change_request and not committed:
                raise ValueError(f"stage {stage.id}: a change request needs the evidence commit before it")
            if stage.after is not None and stage.after not in seen:
                raise ValueError(f"stage {stage.id}: 'after' must name an earlier stage, not {stage.after!r}")
            seen.append(stage.id)
        kinds = [s.kind for s in self.stages]
        for required in ("promote", "evidence_commit", "soak_gate"):
            if required not in kinds:
                raise ValueError(f"the plan has no {required} stage")

    # -- lookups used by the DAG and the operators -------------------------------------------------
    def stage(self, stage_id: str) -> StagePlan:
        for stage in self.stages:
            if stage.id == stage_id:
                return stage
        raise KeyError(f"no stage {stage_id!r} in plan {self.name!r}")

    @property
    def targets(self) -> list[TargetPlan]:
        return [t for s in self.stages for t in s.targets]

    def image_key(self, target: str) -> str:
        for t in self.targets:
            if t.target == target:
                return t.image_key
        raise KeyError(f"unknown target {target!r}")

    def evidence_path(self, build_name: str) -> str:
        return f"{self.evidence.directory}/immutableimage_{build_name}_evidence.md"

    def rollout_record_path(self, build_name: str) -> str:
        """The build's rollout record (which run claimed it, whether it finished): beside the evidence
        directory, not in it, so the train evidence stays the runbook's files only."""
        parent, _, leaf = self.evidence.directory.rstrip("/").rpartition("/")
        return f"{parent + '/' if parent else ''}rollouts/{leaf}/immutableimage_{build_name}_rollout.json"


def _format_error(path: Path, err: msgspec.ValidationError) -> str:
    """``rollout plan <file> is invalid:`` and the field, dotted (``stages.1.targets.0.image_key``)."""
    match = re.match(r"(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", str(err), re.S)
    where = re.sub(r"\[(\d+)\]", r".\1", match["path"] or "").lstrip(".") or "(plan)"
    return f"rollout plan {path} is invalid:\n  - {where}: {match['msg']}"


def _asked_for(name: str | os.PathLike | None) -> str:
    """The plan ``name`` stands for: itself, else ``$ROLLOUT_PLAN``, else ``default``."""
    return str(name or os.environ.get(PLAN_ENV) or "default")


def plan_path(name: str | os.PathLike | None = None) -> Path:
    """The file of a plan: ``name`` (default ``$ROLLOUT_PLAN`` or ``default``); a bare name means
    ``include/plans/<name>.json``."""
    raw = _asked_for(name)
    path = Path(raw)
    if not path.suffix:
        path = PLANS_DIR / f"{raw}.json"
    return path.resolve()


def load_plan(name: str | os.PathLike | None = None) -> RolloutPlan:
    """Load and validate a plan; ``name`` defaults to ``$ROLLOUT_PLAN`` or ``include/plans/default.json``.

    A bare name (``sandbox``) means ``include/plans/<name>.json``. Read from the file at every call, so a
    long-running process (the status page) sees an edited plan; a load costs tens of microseconds.
    """
    path = plan_path(name)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PlanError(f"rollout plan {path} does not exist") from None
    try:
        plan = msgspec.json.decode(raw, type=RolloutPlan, dec_hook=_decode_hook)
    except msgspec.ValidationError as exc:
        raise PlanError(_format_error(path, exc)) from None
    except msgspec.DecodeError as exc:
        raise PlanError(f"rollout plan {path} is not valid JSON: {exc}") from None
    if plan.source is not None:
        raise PlanError(f"rollout plan {path} is invalid:\n  - source: set by load_plan, not a key of the plan file")
    asked = _asked_for(name)
    # The struct is fresh and was checked by the decode: set, not ``replace`` (which would check it again).
    msgspec.structs.force_setattr(plan, "source", asked if Path(asked).suffix == "" else str(path))
    return _plain_floats(plan)


def _plain_floats(part):
    """``part`` with every ``Seconds`` turned into a plain float (in place: the structs are fresh)."""
    if isinstance(part, tuple):
        for item in part:
            _plain_floats(item)
    elif isinstance(part, Struct):
        for name in part.__struct_fields__:
            value = getattr(part, name)
            if isinstance(value, Seconds):
                msgspec.structs.force_setattr(part, name, float(value))
            else:
                _plain_floats(value)
    return part


def main(argv: list[str] | None = None) -> int:
    """``python -m image_rollout.plan [PLAN ...]``: validate plans (default: ``$ROLLOUT_PLAN``)."""
    for name in (argv if argv is not None else sys.argv[1:]) or [None]:
        try:
            plan = load_plan(name)
        except PlanError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"{plan.name}: valid ({plan_path(name)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
