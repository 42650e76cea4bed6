"""DAG integrity, strict like upstream's example-DAG test: every DAG imports, is tagged, retries,
and parsing touches neither connections, Variables, nor the network."""

from __future__ import annotations

import socket
from pathlib import Path
from unittest import mock

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


def _forbidden(what):
    def fail(*args, **kwargs):
        raise AssertionError(f"DAG parsing must not call {what}")

    return fail


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import BaseHook, Variable

    with (
        mock.patch.object(BaseHook, "get_connection", _forbidden("BaseHook.get_connection")),
        mock.patch.object(Variable, "get", _forbidden("Variable.get")),
        mock.patch.object(socket, "create_connection", _forbidden("the network")),
    ):
        return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"immutable_image_rollout", "immutable_image_watcher", "immutable_image_backout"}


@pytest.mark.parametrize("dag_id", ["immutable_image_rollout", "immutable_image_watcher", "immutable_image_backout"])
def test_tags_retries_and_docs(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.tags, f"{dag_id} has no tags"
    assert dag.doc_md and len(dag.doc_md) > 100
    assert dag.catchup is False
    for task in dag.tasks:
        if task.task_type in ("ApprovalOperator", "EmptyOperator"):
            continue  # a plain HITL answer is final; an EmptyOperator does nothing
        assert task.retries >= 2, f"{dag_id}.{task.task_id} retries={task.retries}"


def test_rollout_has_one_taskgroup_per_runbook_stage_in_order(dagbag):
    dag = dagbag.dags["immutable_image_rollout"]
    groups = list(dag.task_group.children)
    assert groups == [
        "build_verification", "dev_sjc04_carrier12", "dev_south", "prestage_mon01_carrier1", "prestage_south",
        "evidence", "stage_dal10_carrier0", "evidence_update", "stage_south", "bake", "ap_south", "canary_soak",
        "remaining_prod", "rollout_monitoring", "rollout_end",
    ]
    # every stage waits for the one before it
    order = [g for g in groups if g != "rollout_end"]
    for before, after in zip(order, order[1:], strict=False):
        roots = dag.task_group.children[after].roots
        upstream = {u for r in roots for u in r.upstream_task_ids}
        assert any(u.startswith(before + ".") for u in upstream), f"{after} does not wait for {before}"


def test_waits_are_deferrable_and_write_tasks_share_the_flag_pool(dagbag):
    dag = dagbag.dags["immutable_image_rollout"]
    assert dag.get_task("bake.wait_bake").task_type == "DateTimeSensorAsync"
    for task_id in ("dev_sjc04_carrier12.promote_dev_sjc04_carrier12", "rollout_end.rollback",
                    "stage_south.apply_change_request_stage_south"):
        assert dag.get_task(task_id).pool == "worker_image_flag"
    approve = dag.get_task("ap_south.approve_ap_south")
    assert approve.defaults is None, "the prod approval must never default to Approve"


def _validate(dag, conf):
    import copy

    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


def test_params_schema_refuses_bad_conf(dagbag):
    dag = dagbag.dags["immutable_image_rollout"]
    assert _validate(dag, {"build_name": "532-1250-879-20210818"})["dry_run"] is False
    for bad in ("../../etc/passwd", "532-1250-879", "$(reboot)", ""):
        with pytest.raises(Exception, match="build_name"):
            _validate(dag, {"build_name": bad})
    with pytest.raises(Exception, match="image_ids"):
        _validate(dag, {"build_name": "532-1250-879-20210818", "image_ids": {"dev": "84 95"}})
    with pytest.raises(Exception, match="image_ids"):
        _validate(dag, {"build_name": "532-1250-879-20210818", "image_ids": {"qa": "8495980"}})


def test_backout_params_refuse_bad_conf_and_its_writes_share_the_flag_pool(dagbag):
    dag = dagbag.dags["immutable_image_backout"]
    good = {"build_name": "533-1251-880-20211101", "reason": "autorecovery failures in ap-south"}
    validated = _validate(dag, good)
    assert validated["targets"] == "all" and validated["to_build"] is None and validated["dry_run"] is False
    assert _validate(dag, {**good, "targets": ["ap-south", "dev-south"]})["targets"] == ["ap-south", "dev-south"]
    for bad in ({"reason": ""}, {"reason": "   "}, {"build_name": "$(reboot)"}, {"targets": ["mars-north"]},
                {"targets": []}, {"targets": "some"}, {"to_build": "previous"}):
        with pytest.raises(Exception, match=next(iter(bad))):
            _validate(dag, {**good, **bad})
    with pytest.raises(Exception, match="reason"):
        _validate(dag, {"build_name": "533-1251-880-20211101"})
    assert dag.get_task("restore_targets").pool == "worker_image_flag"
    assert dag.get_task("approve_backout").defaults is None, "the prod approval must never default to Approve"


@pytest.mark.parametrize("plan", [None, "default", "stack"])
def test_every_task_loads_the_plan_its_dag_was_built_from(monkeypatch, plan):
    """The tasks load the plan again when they run. The production plan's name ("production") is not
    its file's ("default"): the tasks once asked for ``production.json`` and every task failed."""
    from airflow.dag_processing.dagbag import DagBag

    from image_rollout.operators.base import RolloutOperator
    from image_rollout.plan import load_plan

    if plan is None:
        monkeypatch.delenv("ROLLOUT_PLAN", raising=False)
    else:
        monkeypatch.setenv("ROLLOUT_PLAN", plan)
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    expected = load_plan()
    operators = []
    for dag_id in ("immutable_image_rollout", "immutable_image_backout"):
        for task in bag.dags[dag_id].tasks:
            if hasattr(task, "expand_input"):  # a mapped task: as it runs, for its first item
                task = task.unmap({name: items[0] for name, items in task.expand_input.value.items()})
            operator = task
            if isinstance(operator, RolloutOperator):
                operators.append(operator)
    assert len(operators) >= 25
    monkeypatch.setenv("ROLLOUT_PLAN", "sandbox")  # the environment may say otherwise when the task runs
    for operator in operators:
        assert operator.plan == expected, operator.task_id


@pytest.mark.parametrize("plan", ["default", "sandbox"])
@pytest.mark.parametrize("name", ["immutable_image_rollout.py", "immutable_image_backout.py", "immutable_image_watcher.py"])
def test_the_dag_processor_can_send_each_parsed_file(monkeypatch, plan, name):
    """What the dag-processor's parser process does with a file: parse, serialize, and send the result to
    its manager as one msgpack frame. A plan duration once reached the frame as a float subclass, the
    encoder refused it, and the real dag-processor never listed the DAGs (no DagBag test saw it)."""
    import structlog
    from airflow.dag_processing.processor import DagFileParseRequest, _parse_file
    from airflow.sdk.execution_time.comms import _RequestFrame

    monkeypatch.setenv("ROLLOUT_PLAN", plan)
    request = DagFileParseRequest(file=str(DAGS / name), bundle_path=DAGS, bundle_name="dags-folder",
                                  callback_requests=[])
    result = _parse_file(request, structlog.get_logger())
    assert result is not None and not result.import_errors, result and result.import_errors
    assert result.serialized_dags
    frame = _RequestFrame(id=0, body=result.model_dump(), context_carrier=None).as_bytes()
    assert len(frame) > 1000
