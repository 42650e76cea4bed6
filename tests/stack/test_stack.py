"""The production shape, for real: CeleryExecutor on PostgreSQL and Redis, every component a process.

Why: ``dag.test()`` cannot show what operators of this DAG promise in production: a REST trigger
per build (a second one refused), waits that hold no worker slot, a 24h bake (40s here, plan
``stack``) that survives the scheduler and the triggerer being killed mid-wait without restarting
or being cut short, and a prod approval given over the API. One rollout runs in a module fixture;
the tests below assert on what it observed. Wall time and peak RSS go to ``build/stack-test.json``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from datetime import UTC, datetime

import pytest

from tests.harness.env import BUILD, sandbox_call
from tests.harness.stack import (
    DAG_ID,
    TERMINAL_RUN,
    TRANSIENT,
    AirflowStack,
    create_database,
    drop_database,
    drop_stale_databases,
    ensure_services,
    redis_forget_queue,
    run_id_for,
    state_str,
    ti_key,
    wait_for,
)

PLAN = "stack"
BAKE = "bake.wait_bake"
BAKE_UNTIL = "bake.bake_until"
SOAK = "canary_soak.soak_gate"
WAITS = (BAKE, SOAK)
RUN_TIMEOUT = 1200
REPORT = BUILD / "stack-test.json"


def _parse(moment: str | datetime) -> datetime:
    if isinstance(moment, datetime):
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(moment).replace("Z", "+00:00"))


def _bake_snapshot(stack: AirflowStack, run_id: str) -> dict:
    ti = stack.task_instance(run_id, BAKE)
    until_ti = stack.task_instance(run_id, BAKE_UNTIL)
    return {
        "state": state_str(ti.state),
        "bake_until": stack.xcom(run_id, BAKE_UNTIL),
        "bake_until_try": until_ti.try_number,
        "wait_try": ti.try_number,
        "trigger_id": ti.trigger.id if ti.trigger else None,
        "trigger_kwargs": ti.trigger.kwargs if ti.trigger else None,
        "triggerer_id": ti.trigger.triggerer_id if ti.trigger else None,
        "start_date": ti.start_date.isoformat() if ti.start_date else None,
    }


def _restart_during_bake(stack: AirflowStack, run_id: str, obs: dict) -> None:
    """Once a triggerer holds the bake's trigger: SIGKILL scheduler and triggerer, then start them again."""
    def assigned():
        snap = _bake_snapshot(stack, run_id)
        return snap if snap["state"] == "deferred" and snap["triggerer_id"] else None

    before = wait_for(assigned, timeout=30, interval=0.5, what="the bake's trigger held by a triggerer")
    obs["before_restart"] = before
    obs["killed_at"] = datetime.now(UTC).isoformat()
    stack.stop_component("scheduler", hard=True)
    stack.stop_component("triggerer", hard=True)
    time.sleep(2)
    stack.start_component("scheduler")
    stack.start_component("triggerer")
    obs["restarted_at"] = datetime.now(UTC).isoformat()
    print(f"[stack] killed scheduler+triggerer at {obs['killed_at']} (bake until {before['bake_until']}), restarted")


@pytest.fixture(scope="module")
def rollout(request):
    """Run one rollout on the real stack and return what was observed (the tests assert on it)."""
    from include.sandbox import serve_in_thread

    ensure_services()
    drop_stale_databases()
    started = time.monotonic()
    obs: dict = {"samples": [], "approvals": [], "after_restart": [], "errors": []}
    server, sandbox_url = serve_in_thread(port=0)
    db_name, db_url = create_database()
    home = BUILD / "stack-test"
    if home.exists():
        shutil.rmtree(home)
    stack = AirflowStack(home, sandbox_url, db_url=db_url, executor="CeleryExecutor", plan=PLAN)
    try:
        sandbox_call(sandbox_url, "/_sandbox/reset", {})
        build = sandbox_call(sandbox_url, "/_sandbox/state")["builds"]["new"]
        stack.start()
        stack.wait_dag(DAG_ID)
        stack.unpause(DAG_ID)
        obs["stack_up_seconds"] = round(time.monotonic() - started, 1)
        run_id = run_id_for(build)
        triggered = time.monotonic()
        first = stack.trigger_rollout(build)
        obs["first_trigger"] = {"dag_run_id": first.dag_run_id, "state": state_str(first.state)}
        try:
            stack.trigger_rollout(build)
            obs["second_trigger_status"] = 200
        except TRANSIENT as exc:
            obs["second_trigger_status"] = getattr(exc, "status", None)
        run_state = None
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            stack.check_alive()
            try:
                tis = stack.task_instances(run_id)
                run_state = state_str(stack.dag_run(run_id).state)
            except TRANSIENT as exc:
                obs["errors"].append(f"{type(exc).__name__}: {str(exc)[:200]}")
                time.sleep(1)
                continue
            states = {ti_key(ti): state_str(ti.state) for ti in tis}
            deferred = [t for t in WAITS if states.get(t) == "deferred"]
            if deferred:
                obs["samples"].append({"deferred": deferred, "running": sorted(k for k, s in states.items()
                                                                              if s == "running")})
            if states.get(BAKE) == "deferred" and "killed_at" not in obs:
                _restart_during_bake(stack, run_id, obs)
                continue
            if "killed_at" in obs and states.get(BAKE) == "deferred":
                ti = next(t for t in tis if t.task_id == BAKE)
                obs["after_restart"].append({"trigger_id": ti.trigger.id if ti.trigger else None,
                                             "triggerer_id": ti.trigger.triggerer_id if ti.trigger else None,
                                             "try_number": ti.try_number})
            if any(s == "awaiting_input" for s in states.values()):
                obs["approvals"] += stack.approve_pending(run_id, option="Approve", user="sre-approver")
            if run_state in TERMINAL_RUN:
                break
            time.sleep(1)
        obs["run_state"] = run_state
        obs["rollout_seconds"] = round(time.monotonic() - triggered, 1)
        obs["states"] = stack.task_states(run_id)
        if "before_restart" in obs:
            obs["after_run"] = _bake_snapshot(stack, run_id)
            ti = stack.task_instance(run_id, BAKE)
            obs["bake_end"] = ti.end_date.isoformat() if ti.end_date else None
        obs["sandbox"] = sandbox_call(sandbox_url, "/_sandbox/state")
        obs["peak_rss"] = stack.peak_rss
        obs["restarts"] = dict(stack.restarts)
        yield obs
    finally:
        stack.stop()
        with contextlib.suppress(Exception):
            redis_forget_queue(stack)
        drop_database(db_name)
        server.shutdown()
        obs["wall_seconds"] = round(time.monotonic() - started, 1)
        BUILD.mkdir(exist_ok=True)
        REPORT.write_text(json.dumps({
            "wall_seconds": obs["wall_seconds"],
            "stack_up_seconds": obs.get("stack_up_seconds"),
            "rollout_seconds": obs.get("rollout_seconds"),
            "run_state": obs.get("run_state"),
            "peak_rss_mb": (obs.get("peak_rss") or stack.peak_rss).get("rss_mb"),
            "peak_pss_mb": (obs.get("peak_rss") or stack.peak_rss).get("pss_mb"),
            "peak_rss": obs.get("peak_rss") or stack.peak_rss,
            "executor": stack.executor,
            "components": list(stack.components),
            "restarts": dict(stack.restarts),
            "plan": PLAN,
            "bake": {k: obs.get(k) for k in ("before_restart", "killed_at", "restarted_at", "after_run", "bake_end")},
            "deferred_samples": len(obs["samples"]),
            "measured_at": datetime.now(UTC).isoformat(),
        }, indent=2, default=str))
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        line = (f"[stack] rollout {obs.get('run_state')} in {obs.get('rollout_seconds')}s, stack up in "
                f"{obs.get('stack_up_seconds')}s, wall time {obs['wall_seconds']}s, peak RSS "
                f"{stack.peak_rss.get('rss_mb')} MB (PSS {stack.peak_rss.get('pss_mb')} MB) over {stack.peak_rss.get('processes')} processes -> {REPORT}")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print("\n" + line)


def test_second_trigger_for_the_same_build_is_refused(rollout):
    assert rollout["first_trigger"]["dag_run_id"].startswith("rollout__")
    assert rollout["second_trigger_status"] == 409


def test_rollout_completes_with_every_rule_on_the_new_image(rollout):
    assert rollout["run_state"] == "success", {k: s for k, s in rollout["states"].items() if s != "success"}
    bad = {k: s for k, s in rollout["states"].items() if s not in ("success", "skipped")}
    assert not bad, bad
    assert rollout["states"]["rollout_end.rollback"] == "skipped"
    sandbox = rollout["sandbox"]
    new = sandbox["images"]["new"]
    assert sandbox["flag"]["rules"], "the sandbox has no rules"
    assert {t: m for t, m in sandbox["flag"]["rules"].items() if m != new} == {}
    promoted = [p["target"] for p in sandbox["promotions"]]
    assert sorted(promoted) == sorted(set(promoted)), "a target was promoted twice"


def test_prod_change_was_approved_over_the_api(rollout):
    approvals = rollout["approvals"]
    assert [a["task_id"] for a in approvals] == ["ap_south.approve_ap_south"]
    assert approvals[0]["responded_by"]["name"] == "sre-approver"
    assert approvals[0]["chosen"] == ["Approve"]
    assert rollout["states"]["ap_south.approve_ap_south"] == "success"


def test_bake_survives_scheduler_and_triggerer_restart(rollout):
    before, after = rollout["before_restart"], rollout["after_run"]
    assert rollout["restarts"]["scheduler"] == 1 and rollout["restarts"]["triggerer"] == 1
    bake_until = _parse(before["bake_until"])
    assert _parse(rollout["killed_at"]) < bake_until, "the restart must fall inside the bake"
    # not restarted: the persisted end of the bake, the trigger and the tries are the ones from before
    assert after["bake_until"] == before["bake_until"]
    assert after["bake_until_try"] == before["bake_until_try"] == 1
    assert after["wait_try"] == before["wait_try"]
    seen = rollout["after_restart"]
    assert seen, "the bake was never seen deferred after the restart"
    assert {s["trigger_id"] for s in seen} == {before["trigger_id"]}, "the bake's trigger was replaced"
    assert {s["try_number"] for s in seen} == {before["wait_try"]}
    # the killed triggerer's trigger is handed to the new one (same trigger row, same target time)
    took_over = {s["triggerer_id"] for s in seen if s["triggerer_id"]} - {before["triggerer_id"]}
    assert took_over, "no new triggerer took the bake's trigger over"
    # not skipped: it ended at or after the persisted end of the bake
    assert after["state"] == "success"
    assert _parse(rollout["bake_end"]) >= bake_until


def test_no_task_holds_a_worker_slot_while_waiting(rollout):
    samples = rollout["samples"]
    for wait in WAITS:
        assert any(wait in s["deferred"] for s in samples), f"{wait} was never seen deferred"
    holding = [s for s in samples if s["running"]]
    assert not holding, holding
