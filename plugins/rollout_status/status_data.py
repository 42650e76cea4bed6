"""What the status page shows, assembled from the metadata DB: runs, task states and XComs of the rollout.

``load_*`` read rows with Airflow's models and session; ``assemble_run`` turns the rows of one run
into the page's data (also the JSON API), with no I/O, so it is tested on plain dicts too.
Task ids and XCom shapes are the rollout DAG's (``image_rollout.rollout_dag`` and its operators).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import Any
from urllib.parse import quote

from image_rollout.contracts import (
    BACKOUT_APPROVE_TASK,
    BACKOUT_DAG_ID,
    BACKOUT_RESOLVE_TASK,
    BACKOUT_RESTORE_TASK,
    END_GROUP,
    FLEET_TASK,
    ROLLBACK_TASK,
    VERIFY_TASK,
    adoption_task_id,
    approve_task_id,
    bake_until_task_id,
    evidence_task_id,
    file_request_task_id,
    promotion_task_id,
    record_approval_task_id,
    reload_check_task_id,
    soak_gate_task_id,
    stage_of,
    wait_bake_task_id,
)
from image_rollout.contracts import ROLLOUT_DAG_ID as DAG_ID
from image_rollout.contracts import iso as contracts_iso
from image_rollout.contracts import parse_time_or_none as parse_time
from image_rollout.plan import RolloutPlan, StagePlan

FINISHED = {"success", "failed", "skipped", "upstream_failed", "removed"}
WAITING = {"deferred", "awaiting_input", "up_for_reschedule"}

# (task_id, map_index) -> task instance fields; (task_id, map_index, key) -> XCom value
TaskStates = dict[tuple[str, int], dict[str, Any]]
XComs = dict[tuple[str, int, str], Any]


# -- small helpers ---------------------------------------------------------------------------------
def iso(moment: datetime | None) -> str | None:
    """The rollout's time format (``contracts.iso``); None stays None (a task that has not run)."""
    return None if moment is None else contracts_iso(moment)


def jsonable(value: Any) -> Any:
    """XCom values deserialised by Airflow may hold datetimes or tuples: make them JSON-friendly."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _state(states: TaskStates, task_id: str, map_index: int = -1) -> str | None:
    row = states.get((task_id, map_index))
    return row["state"] if row else None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _seconds_left(until: datetime | None, now: datetime) -> float | None:
    if until is None:
        return None
    return round(max(0.0, (until - now).total_seconds()), 1)


def _group_state(states: list[str | None]) -> str:
    """One word for a stage from its tasks' states, worst first."""
    present = [s for s in states if s]
    for word in (
        "failed",
        "upstream_failed",
        "up_for_retry",
        "running",
        "awaiting_input",
        "deferred",
        "queued",
        "scheduled",
    ):
        if word in present:
            return word
    if present and all(s == "success" for s in present):
        return "success"
    if present and all(s in FINISHED for s in present):
        return "skipped" if all(s == "skipped" for s in present) else "success"
    return "running" if present and any(s == "success" for s in present) else "none"


#: LaunchDarkly's own page of one approval request (its UI path beside the flag's, as the runbook links
#: ``app.launchdarkly.com/default/production/features/worker-image/variations``).
LAUNCHDARKLY_REQUEST_URL = (
    "https://app.launchdarkly.com/{project_key}/{environment_key}/features/{flag_key}/approvals/{request_id}"
)
URL_FIELDS = ("request_id", "target", "project_key", "environment_key", "flag_key")


def change_request_url(template: str, request_id: str | None, **fields: str) -> str | None:
    """The link of one change request: ``template`` with ``{request_id}`` (and ``{target}``,
    ``{project_key}``, ``{environment_key}``, ``{flag_key}``) filled in, every placeholder URL-quoted.

    A template without ``{request_id}`` would send every request to one page: refused (ValueError).
    """
    if not request_id or not template:
        return None
    if "{request_id}" not in template:
        raise ValueError(f"change_request_url {template!r} has no {{request_id}}: every request would link one page")
    url = template
    for key, value in {**fields, "request_id": request_id}.items():
        url = url.replace("{" + key + "}", quote(str(value), safe=""))
    return url


def evidence_url(known: list[dict], path: str | None, sha: str | None) -> str | None:
    """A blob URL for ``sha``: the GitHub blob URL of another commit of the same file, with this sha."""
    if not sha:
        return None
    for item in known:
        if item.get("url") and item.get("sha") and item.get("path") == path and item["sha"] in item["url"]:
            return item["url"].replace(item["sha"], sha)
    return None


# -- assembly (pure) -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _RunRows:
    """One run's task states and XComs, with what several sections read from them (the verified build,
    the rollback's result), so each section builder takes the run as one argument."""

    plan: RolloutPlan
    states: TaskStates
    xcoms: XComs
    now: datetime
    change_request_template: str = ""

    def xcom(self, task_id: str, map_index: int = -1, key: str = "return_value") -> Any:
        return self.xcoms.get((task_id, map_index, key))

    def state(self, task_id: str, map_index: int = -1) -> str | None:
        return _state(self.states, task_id, map_index)

    @cached_property
    def build(self) -> dict:
        return _dict(self.xcom(VERIFY_TASK))

    @cached_property
    def images(self) -> dict:
        return _dict(self.build.get("images"))

    @cached_property
    def baseline(self) -> dict:
        return _dict(self.build.get("baseline"))

    @cached_property
    def rollback(self) -> dict:
        return _dict(self.xcom(ROLLBACK_TASK))

    @cached_property
    def restored(self) -> dict:
        """Target -> what the rollback restored it to: the run's last word on what that target serves."""
        rolled_back = self.rollback.get("rolled_back") or []
        return {r.get("target"): r.get("restored") for r in rolled_back if isinstance(r, dict)}


def assemble_run(
    plan: RolloutPlan,
    run: dict,
    states: TaskStates,
    xcoms: XComs,
    *,
    now: datetime,
    change_request_template: str = "",
) -> dict:
    """The page's data for one run from its DagRun fields, task states and XComs: one builder per section
    of the page (and of the JSON API), composed here in the JSON's key order."""
    rows = _RunRows(plan, states, xcoms, now, change_request_template)
    conf = _dict(run.get("conf"))
    targets, promoted_at_by_stage = _targets(rows)
    gates = _gates(rows, promoted_at_by_stage)
    return jsonable(
        {
            **_run_fields(plan, run, conf, now),
            "build": _build(rows, conf),
            "summary": _summary(targets, gates, states),
            "stages": [_stage_entry(stage, states) for stage in plan.stages],
            "targets": targets,
            "gates": gates,
            "evidence": _evidence(rows),
            "change_requests": [_change_request(t) for t in targets if t["request_id"]],
            "adoption": _adoption(rows),
            "rollback": _rollback(rows),
            "fleet": _dict(rows.xcom(FLEET_TASK)) or None,
            "hold": None,  # set from the hold Variable by the app (status_data.hold_of)
            "noop": rows.build.get("noop"),  # a rerun of a finished rollout (issue 11 item 1)
            "superseded_by": _superseded_by(xcoms),
        }
    )


def _run_fields(plan: RolloutPlan, run: dict, conf: dict, now: datetime) -> dict:
    """Which run this is, who started it and when: the page's header and the runs list's columns."""
    return {
        "dag_id": run.get("dag_id", DAG_ID),
        "run_id": run.get("run_id"),
        "state": run.get("state"),
        "run_type": run.get("run_type"),
        "triggered_by": run.get("triggering_user_name"),
        "started_at": iso(run.get("start_date")),
        "ended_at": iso(run.get("end_date")),
        "run_after": iso(run.get("run_after")),
        "generated_at": iso(now),
        "plan": plan.name,
        "conf": conf,
    }


def _build(rows: _RunRows, conf: dict) -> dict:
    """The build being rolled out as its verification found it; before verification, the trigger's conf."""
    build = rows.build
    return {
        "name": build.get("name") or conf.get("build_name"),
        "number": build.get("number"),
        "url": build.get("url"),
        "console_url": build.get("console_url"),
        "images": rows.images,
        "verified_at": build.get("verified_at"),
        "dry_run": build.get("dry_run", conf.get("dry_run")),
        "state": rows.state(VERIFY_TASK) or "none",
    }


def _summary(targets: list[dict], gates: list[dict], states: TaskStates) -> dict:
    """The counts the runs list and the page header show, from the other sections and the task states."""
    failed_tasks = sorted(
        f"{task_id}[{map_index}]" if map_index >= 0 else task_id
        for (task_id, map_index), row in states.items()
        if row["state"] == "failed"
    )
    return {
        "targets": len(targets),
        "serving_new": sum(1 for t in targets if t["serves_new"]),
        "rolled_back": sum(1 for t in targets if t["status"] == "rolled back"),
        "gates": len(gates),
        "gates_passed": sum(1 for g in gates if g["passed"] is True),
        "gates_failed": sum(1 for g in gates if g["passed"] is False),
        "failed_tasks": failed_tasks,
        "not_reached": sum(1 for row in states.values() if row["state"] == "upstream_failed"),
    }


def _stage_entry(stage: StagePlan, states: TaskStates) -> dict:
    """One step of the runbook with one word for where it stands (from all the tasks of its group)."""
    prefix = f"{stage.id}."
    return {
        "id": stage.id,
        "kind": stage.kind,
        "state": _group_state([row["state"] for (task_id, _), row in states.items() if task_id.startswith(prefix)]),
        "targets": [t.target for t in stage.targets],
    }


# -- targets and their change requests --
def _targets(rows: _RunRows) -> tuple[list[dict], dict[str, datetime | None]]:
    """Every target of the promote stages in plan order, and when each promote stage last promoted a
    target successfully (None before): the reload and soak gates count their time from it."""
    targets: list[dict] = []
    promoted_at: dict[str, datetime | None] = {}
    for stage in rows.plan.stages:
        if stage.kind != "promote":
            continue
        entries = [_target_entry(rows, stage, index, target) for index, target in enumerate(stage.targets)]
        targets += [entry for entry, _ in entries]
        times = [when for _, when in entries if when]
        promoted_at[stage.id] = max(times) if times else None
    return targets, promoted_at


def _target_entry(rows: _RunRows, stage: StagePlan, index: int, plan_target) -> tuple[dict, datetime | None]:
    """One target of a promote stage (its task mapped when the stage has more than one): what its
    promotion task and change request recorded, what it serves because of them, and when its
    promotion succeeded (None until it did)."""
    map_index = index if len(stage.targets) > 1 else -1
    promote_task = promotion_task_id(stage)
    file_task = file_request_task_id(stage) if stage.change_request else None
    promoted = _dict(rows.xcom(promote_task, map_index))
    filed = _dict(rows.xcom(file_task, map_index)) if file_task else {}
    name = plan_target.target
    state = rows.state(promote_task, map_index)
    previous = promoted.get("previous") or filed.get("previous") or rows.baseline.get(name)
    new = promoted.get("new") or rows.images or None
    serves, status = _serving(rows.restored, name, state, promoted, previous, new)
    request_id = promoted.get("request_id") or filed.get("request_id")
    when = parse_time(promoted.get("promoted_at"))
    entry = {
        "stage": stage.id,
        "target": name,
        "image_key": plan_target.image_key,
        "state": state or "none",
        "file_state": rows.state(file_task, map_index) if file_task else None,
        "status": status,
        "serves": serves,
        "serves_new": bool(rows.images) and serves == rows.images,
        "image_id": serves.get(plan_target.image_key) if isinstance(serves, dict) else None,
        "previous": previous,
        "new": new,
        "changed": promoted.get("changed"),
        "promoted_at": iso(when),
        "via": "change request" if stage.change_request else "flag write",
        "request_id": request_id,
        "request_url": _request_url(rows, name, request_id),
        **_recorded_status(state, filed, request_id),
        "evidence_sha": promoted.get("evidence_sha") or filed.get("evidence_sha"),
        "evidence_link": filed.get("evidence_link"),
    }
    return entry, (when if when and state == "success" else None)


def _serving(restored: dict, name: str, state: str | None, promoted: dict, previous, new) -> tuple[Any, str]:
    """What a target serves by the run's records, and in words why: a rollback's restore is the run's
    last word, then a successful promotion; otherwise it still serves what it served before."""
    if name in restored:
        return restored[name], "rolled back"
    if state == "success" and promoted:
        return new, ("already serving" if promoted.get("changed") is False else "promoted")
    status = {"failed": "failed", "upstream_failed": "not reached", "skipped": "skipped"}.get(
        state or "", "waiting" if state in WAITING or state == "running" else "pending"
    )
    return previous, status


def _request_url(rows: _RunRows, target: str, request_id: str | None) -> str | None:
    """The change request's own page: the configured template's, else LaunchDarkly's."""
    flag = rows.plan.flag
    return change_request_url(
        rows.change_request_template or LAUNCHDARKLY_REQUEST_URL,
        request_id,
        target=target,
        project_key=flag.project_key,
        environment_key=flag.environment_key,
        flag_key=flag.flag_key,
    )


#: What the change requests table shows of a target's entry.
_CHANGE_REQUEST_FIELDS = (
    "stage",
    "target",
    "request_id",
    "request_url",
    "review_status",
    "request_status",
    "status_source",
    "evidence_sha",
    "evidence_link",
    "state",
)


def _change_request(target: dict) -> dict:
    """A target's change request as the change requests table lists it (from the target's entry, so the
    two never disagree)."""
    return {key: target[key] for key in _CHANGE_REQUEST_FIELDS}


# -- gates --
def _gates(rows: _RunRows, promoted_at: dict[str, datetime | None]) -> list[dict]:
    """The run's gates in plan order. A gate counts its time from the promotions of the stages before it
    only: a soak whose region is promoted later in the plan has no start yet."""
    gates: list[dict] = []
    earlier: dict[str, datetime | None] = {}
    for stage in rows.plan.stages:
        if stage.kind == "promote":
            earlier[stage.id] = promoted_at[stage.id]
        gates += _stage_gates(rows, stage, earlier)
    return gates


def _stage_gates(rows: _RunRows, stage: StagePlan, promoted_at: dict[str, datetime | None]) -> list[dict]:
    """The gates one stage puts on the page: a promotion's prod approval and reload check, the bake, the
    canary soak (none for evidence and monitoring stages)."""
    if stage.kind == "promote":
        gates = [_approval_gate(stage, rows.states, rows.xcom)] if stage.human_approval else []
        if stage.carrier:
            gates.append(_reload_gate(rows.plan, stage, rows.states, rows.xcom, promoted_at[stage.id], rows.now))
        return gates
    if stage.kind == "bake":
        return [_bake_gate(stage, rows.states, rows.xcom, rows.now)]
    if stage.kind == "soak_gate":
        region = rows.plan.soak.region
        started = promoted_at.get(stage_of(rows.plan, region).id)
        return [_soak_gate(rows.plan, stage, rows.states, rows.xcom, started, rows.now)]
    return []


# -- evidence --
def _evidence(rows: _RunRows) -> list[dict]:
    """The evidence file's commits in the order the run makes them: the evidence stages, then the records
    appended later (the prod approval, a rollback). A commit recorded without a URL is linked through
    another commit of the same file."""
    evidence = [
        *(_evidence_step(rows, s) for s in rows.plan.stages if s.kind in ("evidence_commit", "evidence_update")),
        *(record for s in rows.plan.stages if s.human_approval and (record := _approval_record(rows, s))),
        *_rollback_record(rows),
    ]
    for item in evidence:
        if not item["url"]:
            item["url"] = evidence_url(evidence, item["path"], item["sha"])
    return evidence


def _evidence_step(rows: _RunRows, stage: StagePlan) -> dict:
    """An evidence stage's commit: the first commit of the file, or the update adding the stage reloads."""
    first = stage.kind == "evidence_commit"
    task_id = evidence_task_id(stage)
    value = _dict(rows.xcom(task_id))
    return {
        "stage": stage.id,
        "task_id": task_id,
        "state": rows.state(task_id) or "none",
        "step": "first commit" if first else "stage reloads added",
        "path": value.get("path"),
        "sha": value.get("sha"),
        "url": value.get("url"),
    }


def _approval_record(rows: _RunRows, stage: StagePlan) -> dict | None:
    """The prod approval recorded in the evidence, once its task ran (None before)."""
    task_id = record_approval_task_id(stage)
    value = _dict(rows.xcom(task_id))
    if not (value or rows.state(task_id)):
        return None
    return {
        "stage": stage.id,
        "task_id": task_id,
        "state": rows.state(task_id) or "none",
        "step": "prod approval recorded",
        "path": value.get("path"),
        "sha": value.get("sha"),
        "url": None,
    }


def _rollback_record(rows: _RunRows) -> list[dict]:
    """The rollback's entry in the evidence, when it wrote one."""
    if not rows.rollback.get("evidence_sha"):
        return []
    return [
        {
            "stage": END_GROUP,
            "task_id": ROLLBACK_TASK,
            "state": rows.state(ROLLBACK_TASK),
            "step": "rollback recorded",
            "path": rows.plan.evidence_path(rows.build.get("name", "")),
            "sha": rows.rollback["evidence_sha"],
            "url": None,
        }
    ]


# -- adoption, rollback, supersession --
def _adoption(rows: _RunRows) -> dict | None:
    """How much of the fleet runs the new image, per carrier, against the plan's threshold (None until
    the monitoring task has a state or a reading)."""
    adoption_task = adoption_task_id(rows.plan)
    value = _dict(rows.xcom(adoption_task, key="adoption")) or _dict(rows.xcom(adoption_task))
    state = rows.state(adoption_task)
    if not (value or state):
        return None
    carriers = [
        {"name": name, **{k: _dict(v).get(k) for k in ("new", "total", "percent")}}
        for name, v in sorted(_dict(value.get("carriers")).items())
    ]
    return {
        "state": state or "none",
        "percent": value.get("percent"),
        "new": value.get("new"),
        "total": value.get("total"),
        "report_build": value.get("report_build"),
        "threshold_percent": rows.plan.adoption.threshold_percent,
        "carriers": carriers,
    }


def _rollback(rows: _RunRows) -> dict | None:
    """Why the run rolled back and what it restored (None when the rollback task did not run)."""
    rollback, state = rows.rollback, rows.state(ROLLBACK_TASK)
    if not (rollback or state in ("success", "failed", "running")):
        return None
    return {
        "state": state,
        "failed_gate": rollback.get("failed_gate"),
        "reason": rollback.get("reason"),
        "rolled_back": rollback.get("rolled_back") or [],
        "failed_tasks": rollback.get("failed_tasks") or [],
        "superseded_by": rollback.get("superseded_by"),
        "evidence_sha": rollback.get("evidence_sha"),
    }


def _superseded_by(xcoms: XComs) -> str | None:
    """The newer build that superseded this rollout, when a task of the run recorded one."""
    return next(
        (str(v) for (_, _, key), v in sorted(xcoms.items(), key=str) if key == "superseded_by" and v),
        None,
    )


def _recorded_status(state: str | None, filed: dict, request_id: str | None) -> dict:
    """Where a change request stands by the run's own records (LaunchDarkly's answer replaces it: see
    ``with_live_requests``): applied when its promotion task applied it (approved, since only an
    approved request is applied), else the review status the request had when it was filed."""
    if not request_id:
        return {"review_status": None, "request_status": None, "status_source": None}
    if state == "success":
        return {"review_status": "approved", "request_status": "applied", "status_source": "apply task"}
    status = "not applied (declined or timed out: see the task log)" if state == "failed" else filed.get("review_status")
    return {"review_status": filed.get("review_status"), "request_status": status, "status_source": "at filing"}


def live_request_status(request: dict) -> str:
    """A LaunchDarkly approval request's ``status`` and ``reviewStatus`` in words."""
    status, review = request.get("status"), request.get("reviewStatus")
    if status == "completed":
        return "applied"
    if status == "failed":
        return "apply failed in LaunchDarkly"
    return {"approved": "approved, not applied yet", "declined": "declined by the change board"}.get(
        review, "waiting for the change board"
    )


def with_live_requests(detail: dict, requests: list[dict] | None, error: str | None = None) -> dict:
    """``detail`` with each change request's status as LaunchDarkly reports it now (the system of record).

    ``requests`` is the flag's approval requests in the environment (None when LaunchDarkly could not be
    read: the recorded status stays, and ``change_request_source`` says why).
    """
    if requests is None:
        detail["change_request_source"] = f"run records (LaunchDarkly not readable: {error or 'unknown error'})"
        return detail
    by_id = {r.get("_id"): r for r in requests if isinstance(r, dict)}
    for entry in [*detail.get("targets", []), *detail.get("change_requests", [])]:
        request_id = entry.get("request_id")
        if not request_id:
            continue
        live = by_id.get(request_id)
        if live is None:
            entry.update(review_status=None, request_status="not in LaunchDarkly (withdrawn or deleted)",
                         status_source="launchdarkly")
        else:
            entry.update(review_status=live.get("reviewStatus"), request_status=live_request_status(live),
                         status_source="launchdarkly")
    detail["change_request_source"] = "launchdarkly"
    return detail


def _passed(state: str | None) -> bool | None:
    """True passed, False failed, None not decided (waiting, or never reached)."""
    if state == "success":
        return True
    if state == "failed":
        return False
    return None


def _reload_gate(plan: RolloutPlan, stage: StagePlan, states: TaskStates, xcom, promoted_at, now) -> dict:
    task_id = reload_check_task_id(stage)
    state = _state(states, task_id)
    result = _dict(xcom(task_id))
    decision = _dict(xcom(task_id, key="decision"))
    figures = result or _dict(decision.get("figures"))
    deadline = None
    if promoted_at is not None and state not in FINISHED:
        deadline = promoted_at + timedelta(seconds=plan.reloads.grace + plan.reloads.timeout)
    return {
        "kind": "reloads",
        "stage": stage.id,
        "task_id": task_id,
        "state": state or "none",
        "passed": _passed(state),
        "title": f"Reloads on {stage.carrier}",
        "carrier": stage.carrier,
        "image_id": result.get("image_id"),
        "succeeded_with_new_image": figures.get("succeeded_with_new_image"),
        "failed_with_new_image": figures.get("failed_with_new_image"),
        "other_image": figures.get("other_image"),
        "required": figures.get("required", plan.reloads.required),
        "reloads": [r for r in figures.get("reloads") or [] if isinstance(r, dict)],
        "reason": decision.get("reason"),
        "deadline": iso(deadline),
        "seconds_left": _seconds_left(deadline, now) if deadline else None,
    }


def _bake_gate(stage: StagePlan, states: TaskStates, xcom, now) -> dict:
    until_task, wait_task = bake_until_task_id(stage), wait_bake_task_id(stage)
    until = parse_time(xcom(until_task))
    state = _state(states, wait_task)
    return {
        "kind": "bake",
        "stage": stage.id,
        "task_id": wait_task,
        "state": state or "none",
        "passed": _passed(state),
        "title": f"Bake after {stage.after}",
        "after": stage.after,
        "wait_seconds": stage.wait,
        "until": iso(until),
        "seconds_left": 0.0 if state == "success" else _seconds_left(until, now),
    }


def _soak_gate(plan: RolloutPlan, stage: StagePlan, states: TaskStates, xcom, started, now) -> dict:
    task_id = soak_gate_task_id(stage)
    state = _state(states, task_id)
    result = _dict(xcom(task_id))
    decision = _dict(xcom(task_id, key="decision"))
    source = result or decision
    figures = _dict(source.get("figures"))
    seconds_left = figures.get("seconds_left")
    if state not in FINISHED and started is not None:
        seconds_left = _seconds_left(started + timedelta(seconds=plan.soak.min_duration), now)
    return {
        "kind": "soak",
        "stage": stage.id,
        "task_id": task_id,
        "state": state or "none",
        "passed": _passed(state),
        "title": f"Canary soak in {plan.soak.region}",
        "region": plan.soak.region,
        "autorecovery_reloads": figures.get("autorecovery_reloads"),
        "failed_reloads": figures.get("failed_reloads"),
        "required_reloads": figures.get("required_reloads", plan.soak.min_autorecovery_reloads),
        "incidents": figures.get("incidents") or [],
        "elapsed_seconds": figures.get("elapsed_seconds"),
        "min_seconds": figures.get("min_seconds", plan.soak.min_duration),
        "seconds_left": seconds_left,
        "started_at": iso(started),
        "reason": source.get("reason"),
        "verdict": source.get("verdict"),
    }


def _approval_gate(stage: StagePlan, states: TaskStates, xcom) -> dict:
    approve_task = approve_task_id(stage)
    record_task = record_approval_task_id(stage)
    answer = _dict(xcom(approve_task))
    record = _dict(xcom(record_task))
    user = _dict(answer.get("responded_by_user"))
    state = _state(states, approve_task)
    chosen = answer.get("chosen_options") or []
    passed = _passed(state)
    if state == "success" and chosen and chosen != ["Approve"]:
        passed = False
    return {
        "kind": "approval",
        "stage": stage.id,
        "task_id": approve_task,
        "state": state or "none",
        "passed": passed,
        "title": f"Prod approval for {', '.join(t.target for t in stage.targets)}",
        "chosen_options": chosen,
        "responded_by": user.get("name") or user.get("id"),
        "responded_at": answer.get("responded_at"),
        "approver": record.get("approver"),
        "approved_at": record.get("approved_at"),
        "record_state": _state(states, record_task),
        "awaiting": state in WAITING,
    }


def run_summary(detail: dict) -> dict:
    """The list page's row for a run."""
    adoption = detail.get("adoption") or {}
    rollback = detail.get("rollback") or {}
    return {
        "run_id": detail["run_id"],
        "build": detail["build"]["name"],
        "state": detail["state"],
        "run_type": detail["run_type"],
        "started_at": detail["started_at"],
        "ended_at": detail["ended_at"],
        "serving_new": detail["summary"]["serving_new"],
        "targets": detail["summary"]["targets"],
        "gates_passed": detail["summary"]["gates_passed"],
        "gates_failed": detail["summary"]["gates_failed"],
        "gates": detail["summary"]["gates"],
        "adoption_percent": adoption.get("percent"),
        "failed_gate": rollback.get("failed_gate"),
        "superseded_by": detail.get("superseded_by"),
        "current_stage": next(
            (s["id"] for s in detail["stages"] if s["state"] not in ("success", "skipped")), None
        ),
    }


# -- a hold for one rollout (issue 11 item 3) -------------------------------------------------------
def hold_of(build_name: str | None, raw: Any) -> dict | None:
    """The hold on this build from the hold Variable's value: who set it, why, and any problem with it
    (a malformed value holds every build, as the rollout's guard does)."""
    from image_rollout import preconditions as pc

    parsed = pc.parse_holds(raw)
    hold = pc.check_hold(parsed, build_name) if build_name else None
    if hold is None:
        return None
    entry = parsed["builds"].get(build_name) or {}
    problem = entry.get("problem") or ("; ".join(parsed["problems"]) if not entry else None)
    return {"build": build_name, "by": entry.get("by"), "reason": entry.get("reason"),
            "since": entry.get("since"), "problem": problem, "text": hold.reason}


def held_builds(raw: Any) -> dict:
    """Every hold in the Variable, for the runs page: ``{"builds": [...], "problems": [...]}``."""
    from image_rollout import preconditions as pc

    parsed = pc.parse_holds(raw)
    builds = [{"build": name, **entry} for name, entry in sorted(parsed["builds"].items())]
    return {"builds": builds, "problems": parsed["problems"], "hold_all": parsed["hold_all"]}


def read_hold_variable() -> Any:
    """The hold Variable's raw value (secrets backends, environment, then the metadata DB)."""
    from airflow.models.variable import Variable

    from image_rollout.preconditions import HOLD_VARIABLE

    return Variable.get(HOLD_VARIABLE, default_var=None)


# -- reading the metadata DB -----------------------------------------------------------------------
def _run_dict(dr) -> dict:
    return {
        "dag_id": dr.dag_id,
        "run_id": dr.run_id,
        "state": str(dr.state) if dr.state else None,
        "run_type": str(dr.run_type) if dr.run_type else None,
        "conf": dr.conf or {},
        "start_date": dr.start_date,
        "end_date": dr.end_date,
        "run_after": dr.run_after,
        "triggering_user_name": getattr(dr, "triggering_user_name", None),
    }


def _load_rows(session, dag_id: str, run_ids: list[str]) -> tuple[dict[str, TaskStates], dict[str, XComs]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    states: dict[str, TaskStates] = {r: {} for r in run_ids}
    xcoms: dict[str, XComs] = {r: {} for r in run_ids}
    if not run_ids:
        return states, xcoms
    rows = session.execute(
        select(
            TaskInstance.run_id,
            TaskInstance.task_id,
            TaskInstance.map_index,
            TaskInstance.state,
            TaskInstance.start_date,
            TaskInstance.end_date,
            TaskInstance.try_number,
        ).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id.in_(run_ids))
    )
    for run_id, task_id, map_index, state, start, end, tries in rows:
        states[run_id][(task_id, map_index)] = {
            "state": str(state) if state else None,
            "start_date": start,
            "end_date": end,
            "try_number": tries,
        }
    for row in session.scalars(
        select(XComModel).where(XComModel.dag_id == dag_id, XComModel.run_id.in_(run_ids))
    ):
        xcoms[row.run_id][(row.task_id, row.map_index, row.key)] = xcom_value(row)
    return states, xcoms


def xcom_value(row) -> Any:
    """An XCom row's value: JSON-decoded by ``XComModel``, then serde-decoded (datetimes and the like)
    as the task SDK does on ``xcom_pull``; a class outside Airflow's allow list stays a string."""
    from airflow.models.xcom import XComModel
    from airflow.sdk.serde import deserialize

    value = XComModel.deserialize_value(row)
    try:
        return deserialize(value)
    except Exception:
        try:
            return deserialize(value, full=False)
        except Exception:
            return value


def load_run(
    session,
    run_id: str,
    plan: RolloutPlan,
    *,
    dag_id: str = DAG_ID,
    now: datetime | None = None,
    change_request_template: str = "",
) -> dict | None:
    """One run's page data, or None when the DAG has no such run."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if dr is None:
        return None
    states, xcoms = _load_rows(session, dag_id, [run_id])
    return assemble_run(
        plan,
        _run_dict(dr),
        states[run_id],
        xcoms[run_id],
        now=now or datetime.now(UTC),
        change_request_template=change_request_template,
    )


def load_runs(
    session, plan: RolloutPlan, *, dag_id: str = DAG_ID, limit: int = 25, now: datetime | None = None
) -> list[dict]:
    """The newest ``limit`` runs of the rollout DAG, newest first, as list rows."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    runs = list(
        session.scalars(
            select(DagRun)
            .where(DagRun.dag_id == dag_id)
            .order_by(DagRun.run_after.desc(), DagRun.id.desc())
            .limit(limit)
        )
    )
    states, xcoms = _load_rows(session, dag_id, [dr.run_id for dr in runs])
    moment = now or datetime.now(UTC)
    return [
        run_summary(assemble_run(plan, _run_dict(dr), states[dr.run_id], xcoms[dr.run_id], now=moment))
        for dr in runs
    ]


# -- backouts (issue 11 item 2): runs of immutable_image_backout for one build -----------------------


def assemble_backout(run: dict, states: TaskStates, xcoms: XComs) -> dict:
    """One backout run as the run page shows it (no I/O); task ids and shapes of ``operators/backout.py``."""
    resolved = _dict(xcoms.get((BACKOUT_RESOLVE_TASK, -1, "return_value")))
    result = _dict(xcoms.get((BACKOUT_RESTORE_TASK, -1, "return_value")))
    restored = result.get("restored") or xcoms.get((BACKOUT_RESTORE_TASK, -1, "restored")) or []
    conf = run.get("conf") or {}
    return {
        "run_id": run["run_id"],
        "state": run.get("state"),
        "build_name": resolved.get("build_name") or conf.get("build_name"),
        "requested_by": resolved.get("requested_by") or run.get("triggering_user_name"),
        "reason": resolved.get("reason") or conf.get("reason"),
        "dry_run": bool(resolved.get("dry_run", conf.get("dry_run"))),
        "targets": conf.get("targets", "all"),
        "planned": [d["target"] for d in resolved.get("decisions") or [] if d.get("action") == "restore"],
        "restored": [{k: r.get(k) for k in ("target", "restored", "to_build", "request_id", "at")} for r in restored],
        "left_alone": list(result.get("left_alone") or []),
        "evidence_url": result.get("evidence_url"),
        "approval": _state(states, BACKOUT_APPROVE_TASK),
        "started_at": iso(run.get("start_date")),
    }


def apply_backouts(run: dict, backouts: list[dict]) -> dict:
    """Mark the run's targets a later backout restored (newest backout first, as ``load_backouts`` lists
    them): the run's own records say what it promoted, not what the target serves since."""
    since: dict[str, dict] = {}
    for bk in backouts:
        if bk.get("dry_run"):
            continue
        for r in bk.get("restored") or []:
            since.setdefault(r["target"], {"to_build": r.get("to_build"), "at": r.get("at"), "run_id": bk["run_id"]})
    for t in run.get("targets") or []:
        t["backed_out"] = since.get(t["target"])
    run["backed_out"] = sorted(since)
    if since and run.get("summary"):
        run["summary"]["serving_new"] = sum(1 for t in run.get("targets") or [] if t["serves_new"] and not t["backed_out"])
    return run


def load_backouts(session, build_name: str | None, *, limit: int = 50) -> list[dict]:
    """The backout runs for ``build_name``, newest first."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    if not build_name:
        return []
    runs = [dr for dr in session.scalars(
        select(DagRun).where(DagRun.dag_id == BACKOUT_DAG_ID)
        .order_by(DagRun.run_after.desc(), DagRun.id.desc()).limit(limit)
    ) if (dr.conf or {}).get("build_name") == build_name]
    states, xcoms = _load_rows(session, BACKOUT_DAG_ID, [dr.run_id for dr in runs])
    return [assemble_backout(_run_dict(dr), states[dr.run_id], xcoms[dr.run_id]) for dr in runs]
