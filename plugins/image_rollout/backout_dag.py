"""Wiring of the backout DAG from a plan (issue 11 item 2): resolve -> (dry run stops) -> file the
trains -> prod start decision -> restore and record.

Kept out of ``dags/`` like the rollout's wiring. Parsing reads only the plan file.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.sdk import DAG, Param
from airflow.task.trigger_rule import TriggerRule

from image_rollout.contracts import (
    BACKOUT_APPROVE_TASK,
    BACKOUT_DAG_ID,
    BACKOUT_FILE_TASK,
    BACKOUT_PROCEED_TASK,
    BACKOUT_RESOLVE_TASK,
    BACKOUT_RESTORE_TASK,
    BUILD_NAME_SCHEMA_PATTERN,
)
from image_rollout.dag_defaults import _proceed, task_defaults
from image_rollout.operators.backout import (
    BackoutApprovalOperator,
    FileBackoutRequestsOperator,
    ResolveBackoutOperator,
    RestoreTargetsOperator,
)
from image_rollout.plan import RolloutPlan
from image_rollout.slack_notifiers import DecisionRequestNotifier


def build_backout_dag(plan: RolloutPlan, *, dag_id: str = BACKOUT_DAG_ID, doc_md: str | None = None) -> DAG:
    """The backout DAG for ``plan``."""
    targets = [t.target for t in plan.targets]
    link = (f"{plan.airflow_base_url}/dags/{dag_id}/runs/{{{{ run_id }}}}/tasks/{BACKOUT_APPROVE_TASK}"
            "/required_actions")
    with DAG(
        dag_id=dag_id,
        schedule=None,
        catchup=False,
        max_active_runs=1,
        default_args=task_defaults(plan, what="backout"),
        doc_md=doc_md,
        tags=["immutable-image", "patching", "backout"],
        params={
            "build_name": Param(
                type="string", pattern=BUILD_NAME_SCHEMA_PATTERN, title="Build to back out",
                description="The immutable_image build whose rollout is backed out, e.g. 533-1251-880-20211101.",
            ),
            "targets": Param(
                "all", title="Targets",
                description=f'"all", or a list of target names: {", ".join(targets)}.',
                oneOf=[{"type": "string", "enum": ["all"]},
                       {"type": "array", "items": {"type": "string", "enum": targets}, "minItems": 1,
                        "uniqueItems": True}],
            ),
            "to_build": Param(
                None, type=["null", "string"], pattern=BUILD_NAME_SCHEMA_PATTERN, title="Restore to build",
                description="Optional: the build to put back. Default: what each target served before the rollout.",
            ),
            "reason": Param(type="string", minLength=1, pattern=r"\S", title="Reason",
                            description="Why the build is backed out (goes to the evidence file and Slack)."),
            "dry_run": Param(False, type="boolean", title="Dry run",
                             description="Show the plan (task log, Slack); write nothing."),
        },
    ) as dag:
        resolve = ResolveBackoutOperator(task_id=BACKOUT_RESOLVE_TASK)
        proceed = ShortCircuitOperator(task_id=BACKOUT_PROCEED_TASK, python_callable=_proceed)
        file = FileBackoutRequestsOperator(task_id=BACKOUT_FILE_TASK)
        approve = BackoutApprovalOperator(
            task_id=BACKOUT_APPROVE_TASK,
            file_task_id=BACKOUT_FILE_TASK,
            target="the backout's prod targets",
            patching_channel=plan.slack.patching_channel,
            approvers=list(plan.approvers.users),
            board_poll=plan.change_request.poll,
            board_timeout=plan.change_request.timeout,
            subject="Approve the prod backout of immutable image build {{ params.build_name }}",
            body=(
                "Backout of build **{{ params.build_name }}**: {{ params.reason }}\n\n"
                f"Prod trains approved by the change board: {{{{ ti.xcom_pull(task_ids='{BACKOUT_FILE_TASK}')"
                ".get('requests') | selectattr('start_decision') | map(attribute='target') | join(', ') }}\n\n"
                "Approve to restore them; Reject stops the backout before they change."
            ),
            response_timeout=timedelta(seconds=plan.change_request.timeout),
            notifiers=[DecisionRequestNotifier(
                channel=plan.slack.patching_channel,
                text=("Approval needed: backout of immutable image build {{ params.build_name }} from prod. "
                      f"Approve or reject here or in Airflow: {link}"),
            )],
            retries=2,  # the machinery only: a decision is never retried (see ProdChangeApprovalOperator)
        )
        restore = RestoreTargetsOperator(task_id=BACKOUT_RESTORE_TASK, execution_timeout=None,
                                         trigger_rule=TriggerRule.NONE_FAILED)
        resolve >> proceed >> file >> approve >> restore
    return dag
