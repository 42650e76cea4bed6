"""The task ids are a contract: Jenkins, the status page, the rollback and the backout read XComs and
states by them. Renaming one in ``image_rollout.contracts`` must be deliberate, so the serialized
DAGs' task ids and edges are compared with a golden list captured before the ids moved there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

GOLDEN = json.loads((Path(__file__).with_name("golden_task_ids.json")).read_text())


def _serialized(which: str):
    from airflow.serialization.serialized_objects import DagSerialization

    from image_rollout.backout_dag import build_backout_dag
    from image_rollout.plan import load_plan
    from image_rollout.rollout_dag import build_dag

    build = build_dag if which == "rollout" else build_backout_dag
    return DagSerialization.from_dict(DagSerialization.to_dict(build(load_plan("default"))))


@pytest.mark.parametrize("which", ["rollout", "backout"])
def test_serialized_task_ids_and_edges_are_the_golden_ones(which):
    dag = _serialized(which)
    assert sorted(dag.task_ids) == GOLDEN[which]["task_ids"]
    edges = sorted([t.task_id, down] for t in dag.tasks for down in t.downstream_task_ids)
    assert edges == GOLDEN[which]["edges"]


def test_contract_ids_name_tasks_of_the_dag():
    """Every id the readers use (contracts' functions of the plan) is a task of the built DAG."""
    from image_rollout import contracts as c
    from image_rollout.plan import load_plan

    plan = load_plan("default")
    task_ids = set(_serialized("rollout").task_ids)
    used = {c.VERIFY_TASK, c.PLAN_TASK, c.PROCEED_TASK, c.FLEET_TASK, c.ROLLBACK_TASK, c.SUPERSEDED_TASK,
            c.COMPLETE_TASK, c.soak_task_id(plan), c.adoption_task_id(plan), *c.gate_task_ids(plan)}
    for stage in plan.stages:
        used.update(c.promotion_task_ids(stage))
        if stage.kind == "promote":
            used.add(c.promotion_task_id(stage))
        if stage.human_approval:
            used.update({c.approve_task_id(stage), c.record_approval_task_id(stage)})
        if stage.kind in ("evidence_commit", "evidence_update"):
            used.add(c.evidence_task_id(stage))
        if stage.kind == "bake":
            used.add(c.bake_until_task_id(stage))
    for target in plan.targets:
        used.add(c.promotion_task_id(plan, target.target))
    assert used <= task_ids, sorted(used - task_ids)
    backout = {c.BACKOUT_RESOLVE_TASK, c.BACKOUT_PROCEED_TASK, c.BACKOUT_FILE_TASK, c.BACKOUT_APPROVE_TASK,
               c.BACKOUT_RESTORE_TASK}
    assert backout == set(_serialized("backout").task_ids)
