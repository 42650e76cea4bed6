"""The rollout plan: the runbook's stage order, targets, counts, waits and channels as data.

The DAG is generated from a plan file under ``include/plans/``. Production and the
sandbox use the same stages; the sandbox plan only shortens the waits. A plan is
validated on load, and a bad plan is refused with a message that names the field.

The dag-processor parses the DAG files in a fresh process every time, and building the
models' validators is most of what a plan costs a parse. So a validated plan is remembered
beside this module's bytecode (``__pycache__``, written under the same rule: not when
``PYTHONDONTWRITEBYTECODE`` is set), keyed by the plan file's bytes, this module's source and
the pydantic version. A later load of the same plan builds the models from it without
validating again; anything else (a changed plan, changed code, an unreadable cache) validates.
"""

# ruff: noqa: I002  no `from __future__ import annotations` here: pydantic would evaluate every field's
# annotation from its string when the models are built, in every DAG parse (about 1 ms).

import hashlib
import json
import math
import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import VERSION as PYDANTIC_VERSION
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PLANS_DIR = Path(__file__).resolve().parents[2] / "include" / "plans"
PLAN_ENV = "ROLLOUT_PLAN"
#: Validated plans, beside this module's bytecode (see the module docstring).
CACHE_DIR = Path(__file__).resolve().parent / "__pycache__"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


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
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration (use e.g. '24h', '30m', '5s'): {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


class _Strict(BaseModel):
    # Validators are built on the first validation, not at import: a load from the cache never needs them.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _seconds(value):
    return parse_duration(value)


class FlagPlan(_Strict):
    project_key: str
    environment_key: str
    flag_key: str


class JenkinsPlan(_Strict):
    image_job: str
    upstream_job: str
    report_job: str
    report_account: str
    rebuilds_on_timeout: int = Field(ge=0, le=5)
    poll: float

    _d = field_validator("poll", mode="before")(_seconds)


class EvidencePlan(_Strict):
    directory: str
    razee_link: str
    concept_doc: str

    @field_validator("directory")
    @classmethod
    def _relative(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must be a relative path inside the repo")
        return value.strip("/")


class ChangeRequestPlan(_Strict):
    security_impact: str
    backout_plan: str
    poll: float
    timeout: float

    _d = field_validator("poll", "timeout", mode="before")(_seconds)


class ReloadPlan(_Strict):
    required: int = Field(ge=1)
    max_failed: int = Field(ge=0)
    grace: float
    timeout: float
    poll: float

    _d = field_validator("grace", "timeout", "poll", mode="before")(_seconds)


class SoakPlan(_Strict):
    """The canary soak. ``poll``: the full read (LaunchDarkly, chlorine, PagerDuty); ``incident_poll``
    (default ``poll``): PagerDuty alone in between, so an incident rolls the canary back within about
    ``incident_poll`` at a fixed PagerDuty budget (``calls_per_day``)."""

    region: str
    min_duration: float
    min_autorecovery_reloads: int = Field(ge=1)
    timeout: float
    poll: float = Field(gt=0)
    incident_poll: float | None = Field(default=None, gt=0)
    incident_title: str

    _d = field_validator("min_duration", "timeout", "poll", "incident_poll", mode="before")(_seconds)

    @model_validator(mode="after")
    def _timeout_after_soak(self):
        if self.timeout < self.min_duration:
            raise ValueError("soak.timeout must be at least soak.min_duration")
        if self.incident_poll is not None and self.incident_poll > self.poll:
            raise ValueError("soak.incident_poll must not be longer than soak.poll")
        return self

    def calls_per_day(self) -> dict[str, int]:
        """Requests a soak day costs each system (one page per list; PagerDuty is asked at every poll)."""
        full = math.ceil(86400 / self.poll)
        return {"pagerduty": math.ceil(86400 / (self.incident_poll or self.poll)), "chlorine": full,
                "launchdarkly": 2 * full}


class GatesPlan(_Strict):
    """Inconclusive is not failed: how long a gate's data may stay unreadable before a person is asked
    to choose "Roll back" or "Keep waiting" (the gate holds and escalates meanwhile)."""

    inconclusive_timeout: float = Field(ge=120)

    _d = field_validator("inconclusive_timeout", mode="before")(_seconds)


class AdoptionPlan(_Strict):
    threshold_percent: float = Field(gt=0, le=100)
    timeout: float
    poll: float

    _d = field_validator("timeout", "poll", mode="before")(_seconds)


class FreezePlan(_Strict):
    variable: str
    poll: float

    _d = field_validator("poll", mode="before")(_seconds)


class SlackPlan(_Strict):
    progress_channel: str
    patching_channel: str


class ApproversPlan(_Strict):
    """Who may give the prod start decision: Airflow user ids (the HITL request's assigned users).

    Never the identity that triggered the run (checked again before the write), and no default answer.
    """

    users: tuple[str, ...] = Field(min_length=1)
    #: Airflow user id -> Slack user id (``U…``/``W…``): who may answer the decision with the Slack buttons.
    #: An approver without one decides in the Airflow UI only; a Slack user not listed here is no approver.
    slack_user_ids: dict[str, str] = Field(default_factory=dict)

    @field_validator("users")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for user in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}", user, re.ASCII):
                raise ValueError(f"approver {user!r} is not an Airflow user id")
        return value

    @model_validator(mode="after")
    def _slack_ids(self):
        seen: dict[str, str] = {}
        for user, slack_id in self.slack_user_ids.items():
            if user not in self.users:
                raise ValueError(f"slack_user_ids: {user!r} is not one of the approvers {list(self.users)}")
            if not isinstance(slack_id, str) or not re.fullmatch(r"[UW][A-Z0-9]{2,20}", slack_id, re.ASCII):
                raise ValueError(f"slack_user_ids: {slack_id!r} (for {user}) is not a Slack user id like U012AB3CD")
            if slack_id in seen:
                raise ValueError(f"slack_user_ids: Slack user {slack_id} is given for both {seen[slack_id]} and {user}")
            seen[slack_id] = user
        return self

    def airflow_user_for_slack(self, slack_user_id: str | None) -> str | None:
        """The approver a Slack user acts as, or None for a Slack user who is not mapped to one."""
        for user, slack_id in self.slack_user_ids.items():
            if slack_id == slack_user_id:
                return user
        return None


class TargetPlan(_Strict):
    target: str
    image_key: Literal["dev", "prod", "prodfr2", "stage"]

    @field_validator("target")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", value):
            raise ValueError(f"target {value!r} must be lower-case letters, digits and dashes")
        return value


class StagePlan(_Strict):
    """One step of the runbook: a promotion (with its gates) or an evidence/bake/soak/monitoring step."""

    id: str
    kind: Literal["promote", "evidence_commit", "evidence_update", "bake", "soak_gate", "adoption"]
    targets: tuple[TargetPlan, ...] = ()
    carrier: str | None = None
    evidence_section: Literal["dev", "prestage", "stage"] | None = None
    change_request: bool = False
    evidence_hash: Literal["first", "latest"] | None = None
    human_approval: bool = False
    after: str | None = None
    wait: float | None = None

    @field_validator("wait", mode="before")
    @classmethod
    def _wait(cls, value):
        return None if value is None else parse_duration(value)

    @field_validator("id")
    @classmethod
    def _snake(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", value):
            raise ValueError(f"stage id {value!r} must be snake_case")
        return value

    @model_validator(mode="after")
    def _shape(self):
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
        return self


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
    retry_delay: float = 120.0
    stages: tuple[StagePlan, ...]

    _d = field_validator("retry_delay", mode="before")(_seconds)

    @model_validator(mode="after")
    def _order(self):
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
        return self

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


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"rollout plan {path} is invalid:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(plan)"
        lines.append(f"  - {where}: {e['msg']}")
    return "\n".join(lines)


def load_plan(path: str | os.PathLike | None = None) -> RolloutPlan:
    """Load and validate a plan; ``path`` defaults to ``$ROLLOUT_PLAN`` or ``include/plans/default.json``.

    A bare name (``sandbox``) means ``include/plans/<name>.json``.
    """
    raw = str(path or os.environ.get(PLAN_ENV) or "default")
    plan_path = Path(raw)
    if not plan_path.suffix:
        plan_path = PLANS_DIR / f"{raw}.json"
    return _load(plan_path.resolve())


@lru_cache(maxsize=8)
def _load(plan_path: Path) -> RolloutPlan:
    try:
        raw = plan_path.read_bytes()
    except FileNotFoundError:
        raise PlanError(f"rollout plan {plan_path} does not exist") from None
    key = _cache_key(raw)
    cached = _read_cache(plan_path, key) if key else None
    if cached is not None:
        return cached
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PlanError(f"rollout plan {plan_path} is not valid JSON: {exc}") from None
    try:
        plan = RolloutPlan.model_validate(data)
    except ValidationError as exc:
        raise PlanError(_format_errors(plan_path, exc)) from None
    if key:
        _write_cache(plan_path, key, plan)
    return plan


# -- the validated-plan cache ---------------------------------------------------------------------

def _cache_key(raw: bytes) -> str | None:
    """None when this module's source cannot be read (bytecode only): then nothing is cached."""
    try:
        digest = hashlib.sha256(Path(__file__).read_bytes())
    except OSError:
        return None
    digest.update(PYDANTIC_VERSION.encode())
    digest.update(raw)
    return digest.hexdigest()[:32]


def _cache_file(plan_path: Path, key: str) -> Path:
    return CACHE_DIR / f"plan-{plan_path.stem}-{key}.json"


def _read_cache(plan_path: Path, key: str) -> RolloutPlan | None:
    try:
        data = json.loads(_cache_file(plan_path, key).read_bytes())
        return _built(RolloutPlan, data)
    except Exception:  # no cache, or one that does not fit: validate the plan instead
        return None


def _write_cache(plan_path: Path, key: str, plan: RolloutPlan) -> None:
    if sys.dont_write_bytecode:
        return
    target = _cache_file(plan_path, key)
    try:
        target.parent.mkdir(exist_ok=True)
        for stale in target.parent.glob(f"plan-{plan_path.stem}-*.json"):
            stale.unlink(missing_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(plan.model_dump(mode="json")))
        os.replace(partial, target)
    except OSError:  # a read-only deployment: every load validates
        pass


def _built(cls: type[BaseModel], data: dict) -> Any:
    """``cls`` from data this code validated before (the cache): no validation, no validators built."""
    if set(data) != set(cls.model_fields):  # the cache holds every field (model_dump), nothing else
        raise ValueError(f"cached {cls.__name__} does not have the model's fields")
    return cls.model_construct(**{name: _value(cls.model_fields[name].annotation, value)
                                  for name, value in data.items()})


def _value(annotation: Any, value: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _built(annotation, value)
    if get_origin(annotation) is tuple:
        return tuple(_value(get_args(annotation)[0], item) for item in value)
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m image_rollout.plan [PLAN ...]``: validate plans and write their cache, as ``compileall``
    does for bytecode when a deployment's code is read-only at run time (default: ``$ROLLOUT_PLAN``)."""
    sys.dont_write_bytecode = False
    for name in (argv if argv is not None else sys.argv[1:]) or [None]:
        try:
            plan = load_plan(name)
        except PlanError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"{plan.name}: valid; cached in {CACHE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
