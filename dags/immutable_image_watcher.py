"""
### Immutable image build watcher

Safety net for the Jenkins webhook: every 15 minutes, look for the newest successful
`oceanPI/immutable_image` build started by a successful `SmithPackageSync-V2` build, and start
`immutable_image_rollout` for it with `dag_run_id` `rollout__<build name>`. A build whose
rollout already exists (the webhook got there first) is skipped, never started twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import airflow.sdk.definitions.decorators  # noqa: F401  what `task` loads: pre-imported by the dag-processor
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task

from image_rollout.contracts import ROLLOUT_DAG_ID, run_id_for


@dag(
    schedule=timedelta(minutes=15),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["immutable-image", "patching", "watcher"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    doc_md=__doc__,
)
def immutable_image_watcher():
    @task
    def find_new_build() -> list[dict]:
        from image_rollout.plan import load_plan
        from image_rollout.watcher import newest_rollout_candidate

        found = newest_rollout_candidate(load_plan())
        if found is None:
            return []
        return [{"trigger_run_id": run_id_for(found["build_name"]), "conf": found}]

    TriggerDagRunOperator.partial(
        task_id="trigger_rollout", trigger_dag_id=ROLLOUT_DAG_ID, skip_when_already_exists=True,
    ).expand_kwargs(find_new_build())


immutable_image_watcher()
