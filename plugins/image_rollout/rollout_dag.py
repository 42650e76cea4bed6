"""Wiring of the rollout DAG from a plan: one TaskGroup per runbook stage, in runbook order.

Kept out of ``dags/`` so the DAG file stays a few lines, and so tests and the benchmark can
build the same DAG from the sandbox plan. Parsing reads only the plan file: no network, no
metadata DB, no Variables.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.python import PythonOperator, ShortCircuitOperator
from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
from airflow.sdk import DAG, Param, TaskGroup
from airflow.task.trigger_rule import TriggerRule

from image_rollout.contracts import (
    BUILD_GROUP,
    BUILD_NAME_SCHEMA_PATTERN,
    COMPLETE_TASK,
    END_GROUP,
    FLEET_TASK,
    IMAGE_ID_SCHEMA_PATTERN,
    IMAGE_KEYS,
    PLAN_TASK,
    PROCEED_TASK,
    ROLLBACK_TASK,
    SUPERSEDED_TASK,
    VERIFY_TASK,
    apply_request_task_id,
    approve_task_id,
    bake_until_task_id,
    evidence_task_id,
    file_request_task_id,
    gate_task_id,
    iso,
    local_id,
    monitor_adoption_task_id,
    parse_time,
    promote_task_id,
    promotion_task_id,
    record_approval_task_id,
    reload_check_task_id,
    soak_gate_task_id,
    wait_bake_task_id,
)
from image_rollout.contracts import ROLLOUT_DAG_ID as DAG_ID
from image_rollout.dag_defaults import _proceed, task_defaults
from image_rollout.operators.approval import ProdChangeApprovalOperator
from image_rollout.operators.build import PlanRolloutOperator, VerifyBuildOperator
from image_rollout.operators.evidence import CommitEvidenceOperator, RecordApprovalOperator
from image_rollout.operators.gates import MonitorAdoptionOperator, ReloadCheckOperator, SoakGateOperator
from image_rollout.operators.promote import (
    ApplyChangeRequestOperator,
    FileChangeRequestOperator,
    PromoteTargetOperator,
)
from image_rollout.operators.rollback import RollbackOperator
from image_rollout.operators.rollout_end import SupersededCheckOperator, VerifyFleetOperator
from image_rollout.plan import RolloutPlan, StagePlan
from image_rollout.slack_notifiers import DecisionRequestNotifier

__all__ = ["DAG_ID", "build_dag"]


def _bake_until(after_task_id: str, wait_seconds: float, **context) -> str:
    """Promotion time of the stage the bake follows, plus the bake: persisted, so retries keep it."""
    promoted = context["ti"].xcom_pull(task_ids=after_task_id)
    items = promoted if isinstance(promoted, list) else [promoted]
    times = [parse_time(p["promoted_at"]) for p in items if p and p.get("promoted_at")]
    if not times:
        raise RuntimeError(f"no promotion time recorded by {after_task_id}: cannot start the bake")
    return iso(max(times) + timedelta(seconds=wait_seconds))


def _earlier(plan: RolloutPlan, stage: StagePlan) -> tuple[StagePlan, ...]:
    return plan.stages[: plan.stages.index(stage)]


def _direct_promotion(plan: RolloutPlan, stage: StagePlan, targets: list[str]):
    """Flag writes: one task, mapped over the stage's targets when it has several."""
    task_id = local_id(promote_task_id(stage))
    if len(targets) > 1:
        return PromoteTargetOperator.partial(task_id=task_id).expand(target=targets)
    return PromoteTargetOperator(task_id=task_id, target=targets[0])


def _waits_before_apply(plan: RolloutPlan, stage: StagePlan) -> dict:
    """What an apply re-proves besides the rule: the canary's bake, the soak for the regions after it."""
    waits: dict = {}
    if any(s.kind == "soak_gate" for s in _earlier(plan, stage)):
        waits["soak_region"] = plan.soak.region
    bake = next((s for s in plan.stages if s.kind == "bake"), None)
    if stage.human_approval and bake is not None:
        waits["bake_target"] = plan.stage(bake.after).targets[0].target
        waits["bake_seconds"] = bake.wait
    return waits


def _change_request_promotion(plan: RolloutPlan, stage: StagePlan, targets: list[str]):
    """Trains: file (with the evidence hash and the previous train), the prod start decision when the
    stage needs one (recorded in the evidence), then apply once the change board approved."""
    earlier = _earlier(plan, stage)
    file_kwargs = dict(
        task_id=local_id(file_request_task_id(stage)), evidence_hash=stage.evidence_hash,
        evidence_task_id=next((evidence_task_id(s) for s in reversed(earlier) if s.kind == "evidence_commit"), None),
        previous_deployment_task_id=next(
            (promotion_task_id(s) for s in reversed(earlier) if s.kind == "promote" and s.change_request), None),
    )
    apply_kwargs = dict(task_id=local_id(apply_request_task_id(stage)), file_task_id=file_request_task_id(stage),
                        execution_timeout=None, **_waits_before_apply(plan, stage))
    if len(targets) > 1:
        filed = FileChangeRequestOperator.partial(**file_kwargs).expand(target=targets)
        applied = ApplyChangeRequestOperator.partial(**apply_kwargs).expand(target=targets)
    else:
        filed = FileChangeRequestOperator(target=targets[0], **file_kwargs)
        if stage.human_approval:
            apply_kwargs["approval_task_id"] = approve_task_id(stage)
        applied = ApplyChangeRequestOperator(target=targets[0], **apply_kwargs)
    if not stage.human_approval:
        filed >> applied
        return applied
    approve = _approval(plan, stage, targets[0])
    record = RecordApprovalOperator(
        task_id=local_id(record_approval_task_id(stage)), approval_task_id=approve_task_id(stage),
        file_task_id=file_request_task_id(stage), target=targets[0],
    )
    filed >> approve >> record >> applied
    return applied


def _promote_stage(plan: RolloutPlan, stage: StagePlan) -> None:
    """Promote the stage's targets (a flag write or a train), then check the reloads on its carrier."""
    targets = [t.target for t in stage.targets]
    promote = _change_request_promotion if stage.change_request else _direct_promotion
    promoted = promote(plan, stage, targets)
    if stage.carrier:
        promoted >> ReloadCheckOperator(
            task_id=local_id(reload_check_task_id(stage)), carrier=stage.carrier,
            image_key=stage.targets[0].image_key, promote_task_id=promotion_task_id(stage),
            execution_timeout=None,
        )


def _evidence_commit_stage(plan: RolloutPlan, stage: StagePlan) -> None:
    CommitEvidenceOperator(task_id=local_id(evidence_task_id(stage)), mode="initial")


def _evidence_update_stage(plan: RolloutPlan, stage: StagePlan) -> None:
    CommitEvidenceOperator(task_id=local_id(evidence_task_id(stage)), mode="stage_reloads")


def _bake_stage(plan: RolloutPlan, stage: StagePlan) -> None:
    """When the bake ends (recorded, so retries keep it), then a deferred wait until then."""
    until = PythonOperator(
        task_id=local_id(bake_until_task_id(stage)), python_callable=_bake_until,
        op_kwargs={"after_task_id": promotion_task_id(plan.stage(stage.after)), "wait_seconds": stage.wait},
    )
    until >> DateTimeSensorAsync(
        task_id=local_id(wait_bake_task_id(stage)),
        target_time=f"{{{{ ti.xcom_pull(task_ids='{bake_until_task_id(stage)}') }}}}",
        timeout=timedelta(seconds=stage.wait * 2 + 3600).total_seconds(),
        execution_timeout=None,
    )


def _soak_stage(plan: RolloutPlan, stage: StagePlan) -> None:
    region = plan.soak.region
    SoakGateOperator(
        task_id=local_id(soak_gate_task_id(stage)), region=region, image_key=plan.image_key(region),
        promote_task_id=promotion_task_id(plan, region), execution_timeout=None,
    )


def _adoption_stage(plan: RolloutPlan, stage: StagePlan) -> None:
    MonitorAdoptionOperator(task_id=local_id(monitor_adoption_task_id(stage)), execution_timeout=None)


#: One builder per kind of stage: it creates the stage's tasks inside the stage's TaskGroup.
STAGE_BUILDERS = {
    "promote": _promote_stage,
    "evidence_commit": _evidence_commit_stage,
    "evidence_update": _evidence_update_stage,
    "bake": _bake_stage,
    "soak_gate": _soak_stage,
    "adoption": _adoption_stage,
}


def _approval(plan: RolloutPlan, stage: StagePlan, target: str) -> ProdChangeApprovalOperator:
    file_task = file_request_task_id(stage)
    link = (f"{plan.airflow_base_url}/dags/{DAG_ID}/runs/{{{{ run_id }}}}/tasks/{approve_task_id(stage)}"
            "/required_actions")
    return ProdChangeApprovalOperator(
        task_id=local_id(approve_task_id(stage)),
        file_task_id=file_task,
        target=target,
        patching_channel=plan.slack.patching_channel,
        approvers=list(plan.approvers.users),
        board_poll=plan.change_request.poll,
        board_timeout=plan.change_request.timeout,
        evidence_path=plan.evidence_path("{{ params.build_name }}"),
        subject=f"Approve the prod change: immutable image build {{{{ params.build_name }}}} to {target}",
        body=(
            f"The prod train for **{target}** is filed: change request "
            f"`{{{{ ti.xcom_pull(task_ids='{file_task}').get('request_id') }}}}`, evidence commit "
            f"`{{{{ ti.xcom_pull(task_ids='{file_task}').get('evidence_sha') }}}}` "
            f"({{{{ ti.xcom_pull(task_ids='{file_task}').get('evidence_link') }}}}).\n\n"
            "Approve to start the canary; Reject stops the rollout before the target changes."
        ),
        response_timeout=timedelta(seconds=plan.change_request.timeout),
        notifiers=[DecisionRequestNotifier(
            channel=plan.slack.patching_channel,
            text=(f"Approval needed: immutable image build {{{{ params.build_name }}}} to {target} "
                  f"(prod change request). Approve or reject here or in Airflow: {link}"),
        )],
        retries=2,  # the machinery only: a decision is never retried (see ProdChangeApprovalOperator)
    )


def build_dag(plan: RolloutPlan, *, dag_id: str = DAG_ID, doc_md: str | None = None) -> DAG:
    """The rollout DAG for ``plan``."""
    default_args = task_defaults(plan)
    image_schema = {"type": "string", "pattern": IMAGE_ID_SCHEMA_PATTERN}
    with DAG(
        dag_id=dag_id,
        schedule=None,
        catchup=False,
        max_active_runs=2,
        default_args=default_args,
        doc_md=doc_md,
        tags=["immutable-image", "patching", "rollout"],
        render_template_as_native_obj=False,
        params={
            "build_name": Param(
                type="string", pattern=BUILD_NAME_SCHEMA_PATTERN, title="Immutable image build name",
                description="The oceanPI/immutable_image build to roll out, e.g. 532-1250-879-20210818.",
            ),
            "build_number": Param(
                None, type=["null", "integer"], minimum=1, title="Jenkins build number",
                description="Optional: the immutable_image build number; found by name when empty.",
            ),
            "image_ids": Param(
                {}, type="object", title="Expected image ids",
                properties={k: image_schema for k in IMAGE_KEYS}, additionalProperties=False,
                description="Optional: image ids to cross-check against the build's image_ids.json.",
            ),
            "dry_run": Param(False, type="boolean", title="Dry run",
                             description="Show the whole plan and the evidence text; write nothing."),
        },
    ) as dag:
        with TaskGroup(BUILD_GROUP, tooltip="Verify the Jenkins immutable_image build") as first:
            verify = VerifyBuildOperator(task_id=local_id(VERIFY_TASK), execution_timeout=None)
            show = PlanRolloutOperator(task_id=local_id(PLAN_TASK))
            proceed = ShortCircuitOperator(task_id=local_id(PROCEED_TASK), python_callable=_proceed)
            verify >> show >> proceed
        previous = first
        gates_tasks = []
        for stage in plan.stages:
            with TaskGroup(stage.id, tooltip=f"{stage.kind}: {', '.join(t.target for t in stage.targets)}") as group:
                STAGE_BUILDERS[stage.kind](plan, stage)
            previous >> group
            previous = group
            if gate_task_id(stage):
                gates_tasks.append(dag.get_task(gate_task_id(stage)))
        with TaskGroup(END_GROUP, tooltip="Check the fleet, or roll back a failed gate"):
            # ALL_DONE: however the run ended, it reports by data which targets serve the build, so a
            # run is green only when every target does.
            # Both report for themselves: the failed task that stopped the run has escalated already,
            # so their own failure must not post a second, misleading alarm.
            verify_fleet = VerifyFleetOperator(task_id=local_id(FLEET_TASK),
                                               trigger_rule=TriggerRule.ALL_DONE, on_failure_callback=None)
            rollback = RollbackOperator(task_id=local_id(ROLLBACK_TASK),
                                        trigger_rule=TriggerRule.ONE_FAILED)
            superseded = SupersededCheckOperator(task_id=local_id(SUPERSEDED_TASK),
                                                 trigger_rule=TriggerRule.ALL_DONE, on_failure_callback=None)
            done = EmptyOperator(task_id=local_id(COMPLETE_TASK))
            verify_fleet >> done
            rollback >> superseded
        previous >> verify_fleet
        previous >> superseded
        for gate in gates_tasks:
            gate >> rollback
    return dag
