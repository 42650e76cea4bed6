"""Data assembly of the status page: on plain rows (failed gates, waits, escaping), and on the DB
of one whole sandbox rollout run in-process (``status_run``), checked against the sandbox's state."""

from __future__ import annotations

import copy
import json
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from rollout_status.status_app import WAITING_STATES
from rollout_status.status_data import (
    assemble_run,
    change_request_url,
    live_request_status,
    promotion_task_id,
    run_summary,
    with_live_requests,
    xcom_value,
)
from rollout_status.status_render import STATE_COLORS, render, safe_url

from image_rollout.plan import load_plan

PLAN = load_plan("sandbox")
NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
OLD = {"dev": "1", "prod": "2", "prodfr2": "3", "stage": "4"}
NEW = {"dev": "11", "prod": "12", "prodfr2": "13", "stage": "14"}


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def base_rows(build_name: str = "533-1251-880-20211101"):
    run = {
        "dag_id": "immutable_image_rollout",
        "run_id": f"rollout__{build_name}",
        "state": "running",
        "run_type": "manual",
        "conf": {"build_name": build_name},
        "start_date": NOW - timedelta(hours=1),
        "end_date": None,
        "run_after": NOW - timedelta(hours=1),
    }
    states = {("build_verification.verify_build", -1): {"state": "success"}}
    xcoms = {
        ("build_verification.verify_build", -1, "return_value"): {
            "name": build_name,
            "number": 7,
            "url": "https://jenkins.example/job/x/7/",
            "images": NEW,
            "baseline": {t.target: OLD for t in PLAN.targets},
        }
    }
    return run, states, xcoms


def promote(states, xcoms, stage_id: str, target: str, at: datetime, state: str = "success"):
    stage = PLAN.stage(stage_id)
    task_id = promotion_task_id(stage)
    states[(task_id, -1)] = {"state": state}
    if state == "success":
        xcoms[(task_id, -1, "return_value")] = {
            "target": target,
            "previous": OLD,
            "changed": True,
            "promoted_at": iso(at),
            "new": NEW,
        }


def html(detail: dict) -> str:
    return render(
        "run.html",
        run=detail,
        base="/rollout-status",
        airflow_root="",
        dag_id="immutable_image_rollout",
        colors=STATE_COLORS,
        waiting=WAITING_STATES,
        refresh=None,
    )


def test_promotion_task_ids_match_the_dag():
    from image_rollout.rollout_dag import build_dag

    task_ids = set(build_dag(PLAN).task_ids)
    for stage in PLAN.stages:
        if stage.kind == "promote":
            assert promotion_task_id(stage) in task_ids


def test_failed_reload_gate_and_rollback():
    run, states, xcoms = base_rows()
    run["state"] = "failed"
    promote(states, xcoms, "dev_sjc04_carrier12", "dev-sjc04-carrier12", NOW - timedelta(minutes=50))
    check = "dev_sjc04_carrier12.reload_check_dev_sjc04_carrier12"
    states[(check, -1)] = {"state": "failed"}
    xcoms[(check, -1, "decision")] = {
        "verdict": "fail",
        "reason": "2 reload(s) failed with image 11: w-1, w-2",
        "figures": {
            "succeeded_with_new_image": 1,
            "failed_with_new_image": 2,
            "required": 3,
            "reloads": [{"worker": "w-3", "change_id": "CHG1"}],
        },
    }
    states[("dev_south.promote_dev_south", -1)] = {"state": "upstream_failed"}
    states[("rollout_end.rollback", -1)] = {"state": "success"}
    xcoms[("rollout_end.rollback", -1, "return_value")] = {
        "failed_gate": "dev_sjc04_carrier12",
        "reason": "2 reload(s) failed with image 11: w-1, w-2",
        "rolled_back": [{"target": "dev-sjc04-carrier12", "restored": OLD}],
        "evidence_sha": "abc123",
    }

    detail = assemble_run(PLAN, run, states, xcoms, now=NOW)

    gate = detail["gates"][0]
    assert (gate["kind"], gate["passed"], gate["failed_with_new_image"]) == ("reloads", False, 2)
    assert gate["reason"].startswith("2 reload(s) failed")
    first = detail["targets"][0]
    assert (first["target"], first["status"], first["serves"], first["serves_new"]) == (
        "dev-sjc04-carrier12",
        "rolled back",
        OLD,
        False,
    )
    assert detail["targets"][1]["status"] == "not reached"
    assert detail["rollback"]["failed_gate"] == "dev_sjc04_carrier12"
    assert detail["summary"]["gates_failed"] == 1 and detail["summary"]["serving_new"] == 0
    assert run_summary(detail)["failed_gate"] == "dev_sjc04_carrier12"
    page = html(detail)
    assert "rolled back" in page and "2 reload(s) failed with image 11" in page


def test_time_left_in_bake_and_soak():
    run, states, xcoms = base_rows()
    promote(states, xcoms, "stage_south", "stage-south", NOW - timedelta(hours=2))
    states[("bake.bake_until", -1)] = {"state": "success"}
    xcoms[("bake.bake_until", -1, "return_value")] = iso(NOW + timedelta(hours=22))
    states[("bake.wait_bake", -1)] = {"state": "deferred"}
    detail = assemble_run(PLAN, run, states, xcoms, now=NOW)
    bake = next(g for g in detail["gates"] if g["kind"] == "bake")
    assert bake["seconds_left"] == 22 * 3600 and bake["passed"] is None
    assert "22h 00m" in html(detail)

    states[("bake.wait_bake", -1)] = {"state": "success"}
    promote(states, xcoms, "ap_south", "ap-south", NOW - timedelta(seconds=3))
    states[("canary_soak.soak_gate", -1)] = {"state": "deferred"}
    detail = assemble_run(PLAN, run, states, xcoms, now=NOW)
    soak = next(g for g in detail["gates"] if g["kind"] == "soak")
    assert soak["seconds_left"] == PLAN.soak.min_duration - 3
    assert soak["started_at"] == iso(NOW - timedelta(seconds=3))


def test_superseded_rollout_says_by_which_build():
    run, states, xcoms = base_rows()
    states[("dev_sjc04_carrier12.promote_dev_sjc04_carrier12", -1)] = {"state": "skipped"}
    xcoms[("dev_sjc04_carrier12.promote_dev_sjc04_carrier12", -1, "superseded_by")] = "534-1-1-20211201"
    detail = assemble_run(PLAN, run, states, xcoms, now=NOW)
    assert detail["superseded_by"] == run_summary(detail)["superseded_by"] == "534-1-1-20211201"
    assert detail["targets"][0]["status"] == "skipped"
    assert "Superseded</strong> by newer build 534-1-1-20211201" in html(detail)


def test_values_from_conf_and_xcom_are_escaped():
    evil = "<script>alert('x')</script>"
    run, states, xcoms = base_rows(build_name=evil)
    xcoms[("evidence.commit_evidence", -1, "return_value")] = {
        "path": "p<b>",
        "sha": "deadbeef",
        "url": "javascript:alert(1)",
    }
    states[("evidence.commit_evidence", -1)] = {"state": "success"}
    states[("rollout_monitoring.monitor_adoption", -1)] = {"state": "running"}
    xcoms[("rollout_monitoring.monitor_adoption", -1, "adoption")] = {
        "carriers": {"<img src=x onerror=alert(1)>": {"new": 1, "total": 2, "percent": 50.0}},
        "new": 1,
        "total": 2,
        "percent": 50.0,
        "report_build": 9,
    }
    page = html(assemble_run(PLAN, run, states, xcoms, now=NOW))
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "javascript:" not in page and "p&lt;b&gt;" in page
    assert (
        safe_url("javascript:alert(1)") is None and safe_url("https://x.example/a") == "https://x.example/a"
    )


def test_xcom_values_are_deserialised_like_xcom_pull():
    from airflow.sdk.serde import serialize

    class Row:
        def __init__(self, value):
            self.value = value

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert xcom_value(Row({"responded_at": serialize(when), "n": 1})) == {"responded_at": when, "n": 1}
    forbidden = {"__classname__": "os.system", "__version__": 1, "__data__": "id"}
    assert isinstance(xcom_value(Row({"x": forbidden})), dict | str)


# -- against the DB of a whole sandbox rollout -----------------------------------------------------------
@pytest.fixture(scope="module")
def detail(status_run):
    assert status_run["run_state"] == "success", status_run
    return status_run["detail"]


def test_runs_list_shows_the_finished_rollout(status_run):
    sandbox = status_run["sandbox_state"]
    [row] = status_run["runs"]
    assert row["build"] == sandbox["builds"]["new"] == status_run["conf"]["build_name"]
    assert (row["state"], row["serving_new"], row["targets"], row["gates_passed"], row["gates_failed"]) == (
        "success",
        16,
        16,
        6,
        0,
    )


def test_every_target_serves_what_the_flag_serves(status_run, detail):
    sandbox = status_run["sandbox_state"]
    assert [t["target"] for t in detail["targets"]] == [t.target for t in PLAN.targets]
    assert detail["build"]["images"] == sandbox["images"]["new"]
    for target in detail["targets"]:
        assert target["state"] == "success", target
        assert target["serves"] == sandbox["flag"]["rules"][target["target"]] == sandbox["images"]["new"]
        assert target["previous"] == sandbox["images"]["previous"]
        assert target["promoted_at"]


def test_gates_carry_their_figures(status_run, detail):
    gates = {g["kind"]: [x for x in detail["gates"] if x["kind"] == g["kind"]] for g in detail["gates"]}
    assert len(gates["reloads"]) == 3
    reloaded = {(r["worker"], r["change_id"]) for r in status_run["sandbox_state"]["reloads"]}
    for gate in gates["reloads"]:
        assert gate["passed"] and gate["succeeded_with_new_image"] >= gate["required"] == 3
        assert (
            len(gate["reloads"]) == 3 and {(r["worker"], r["change_id"]) for r in gate["reloads"]} <= reloaded
        )
    [bake] = gates["bake"]
    assert bake["passed"] and bake["until"] and bake["seconds_left"] == 0
    [soak] = gates["soak"]
    assert soak["passed"] and soak["autorecovery_reloads"] >= soak["required_reloads"] == 10
    assert soak["incidents"] == [] and soak["seconds_left"] == 0
    [approval] = gates["approval"]
    assert approval["chosen_options"] == ["Approve"] and approval["responded_by"] == "sre-approver"
    assert approval["approver"] == "sre-approver" and approval["responded_at"].endswith("Z")


def test_evidence_and_change_requests_match_the_sandbox(status_run, detail):
    sandbox = status_run["sandbox_state"]
    commits = {c["sha"]: c["html_url"] for c in sandbox["evidence"]["commits"]}
    assert {e["sha"]: e["url"] for e in detail["evidence"]} == commits
    requests = {r["_id"] for r in sandbox["approval_requests"]}
    assert {c["request_id"] for c in detail["change_requests"]} == requests
    assert len(requests) == 12  # stage x2, ap-south, 9 remaining prod regions
    for change in detail["change_requests"]:
        assert change["request_url"] == f"https://razee.example/{change['request_id']}"
        assert change["request_status"] == "applied" and change["evidence_sha"] in commits


def test_an_applied_request_is_not_shown_pending(status_run, detail):
    """Without LaunchDarkly the run's records decide: applied by its promotion task, so approved (filed
    "pending"); with LaunchDarkly's answer (the sandbox's requests at the end), what it says now."""
    sandbox = {r["_id"]: r for r in status_run["sandbox_state"]["approval_requests"]}
    for change in detail["change_requests"]:
        assert (change["review_status"], change["status_source"]) == ("approved", "apply task"), change
    live = with_live_requests(copy.deepcopy(detail), list(sandbox.values()))
    assert live["change_request_source"] == "launchdarkly"
    for change in live["change_requests"]:
        request = sandbox[change["request_id"]]
        assert change["review_status"] == request["reviewStatus"] == "approved"
        assert change["request_status"] == "applied" and request["status"] == "completed"
    with_targets = [t for t in live["targets"] if t["request_id"]]
    assert len(with_targets) == len(live["change_requests"])
    assert all(t["status_source"] == "launchdarkly" for t in with_targets)
    gone = with_live_requests(copy.deepcopy(detail), list(sandbox.values())[1:])
    assert gone["change_requests"][0]["request_status"] == "not in LaunchDarkly (withdrawn or deleted)"
    unread = with_live_requests(copy.deepcopy(detail), None, "ConnectionError: refused")
    assert unread["change_requests"] == detail["change_requests"]
    assert unread["change_request_source"] == "run records (LaunchDarkly not readable: ConnectionError: refused)"


def test_each_change_request_links_its_own_page():
    run, states, xcoms = base_rows()
    for stage_id, target in (("stage_dal10_carrier0", "stage-dal10-carrier0"), ("stage_south", "stage-south")):
        promote(states, xcoms, stage_id, target, NOW - timedelta(minutes=30))
        task_id = promotion_task_id(PLAN.stage(stage_id))
        xcoms[(task_id, -1, "return_value")]["request_id"] = f"req/{target}"
    default = assemble_run(PLAN, run, states, xcoms, now=NOW)
    urls = [c["request_url"] for c in default["change_requests"]]
    flag = PLAN.flag
    assert urls == [f"https://app.launchdarkly.com/{flag.project_key}/{flag.environment_key}/features/"
                    f"{flag.flag_key}/approvals/req%2F{t}" for t in ("stage-dal10-carrier0", "stage-south")]
    templated = assemble_run(PLAN, run, states, xcoms, now=NOW,
                             change_request_template="https://razee.example/{flag_key}/{target}/{request_id}")
    assert [c["request_url"] for c in templated["change_requests"]] == [
        f"https://razee.example/{flag.flag_key}/{t}/req%2F{t}" for t in ("stage-dal10-carrier0", "stage-south")]
    with pytest.raises(ValueError, match=r"has no \{request_id\}"):
        change_request_url("https://razee.example/flags/worker-image", "req1")


def test_review_status_is_read_from_launchdarkly_through_the_hook(monkeypatch):
    """Real HTTP: the page's read of LaunchDarkly (``FlagsHook``) against a sandbox, over a filed request."""
    from rollout_status.status_app import _live_requests

    from image_rollout.hooks.flags import FlagsHook
    from include.sandbox import serve_in_thread
    from include.sandbox.connections import sandbox_connections
    from tests.harness.stack import wait_for

    server, base_url = serve_in_thread(port=0)
    try:
        for key, value in sandbox_connections(base_url).items():
            monkeypatch.setenv(key, value)
        build = "533-1251-880-20211101"
        state = json.loads(urllib.request.urlopen(f"{base_url}/_sandbox/state", timeout=10).read())
        filed = FlagsHook().create_change_request(
            ["stage-south"], state["images"]["new"], {"target": "stage-south", "build": build}, "status page test")
        run, states, xcoms = base_rows(build)
        task_id = promotion_task_id(PLAN.stage("stage_south"))
        states[(task_id, -1)] = {"state": "deferred"}
        xcoms[("stage_south.file_change_request_stage_south", -1, "return_value")] = {
            "target": "stage-south", "request_id": filed["_id"], "review_status": "pending"}
        detail = assemble_run(PLAN, run, states, xcoms, now=NOW)
        [change] = detail["change_requests"]
        assert (change["review_status"], change["status_source"]) == ("pending", "at filing")
        # the stage train's auto-approver approves it; the rollout applies it
        wait_for(lambda: FlagsHook().get_change_request(filed["_id"])["reviewStatus"] == "approved", timeout=20,
                 interval=0.5, what="the stage train approved")
        FlagsHook().apply_change_request(filed["_id"])
        requests, error = _live_requests()
        assert error is None
        [change] = with_live_requests(detail, requests)["change_requests"]
        assert (change["review_status"], change["request_status"], change["status_source"]) == (
            "approved", "applied", "launchdarkly")
        assert live_request_status(FlagsHook().get_change_request(filed["_id"])) == "applied"
    finally:
        server.shutdown()
    requests, error = _live_requests()  # the sandbox is gone: no answer, and why
    assert requests is None and "Error" in error


def test_adoption_per_carrier_and_no_rollback(detail):
    adoption = detail["adoption"]
    assert adoption["state"] == "success" and adoption["percent"] >= adoption["threshold_percent"]
    assert adoption["carriers"] and sum(c["total"] for c in adoption["carriers"]) == adoption["total"]
    assert sum(c["new"] for c in adoption["carriers"]) == adoption["new"]
    assert detail["rollback"] is None
    assert detail["fleet"]["targets"] == 16


def test_a_backout_of_the_build_shows_on_its_run_page():
    from rollout_status.status_data import assemble_backout

    build = "533-1251-880-20211101"
    run, states, xcoms = base_rows(build)
    backout_run = {"run_id": "manual__backout", "state": "success", "conf": {"build_name": build,
                   "targets": ["dev-south", "ap-south"], "reason": "soak <b>failed</b>"},
                   "start_date": NOW, "triggering_user_name": "admin"}
    backout_xcoms = {
        ("resolve_backout", -1, "return_value"): {
            "build_name": build, "reason": "soak <b>failed</b>", "requested_by": "admin", "dry_run": False,
            "decisions": [{"target": "dev-south", "action": "restore"}, {"target": "ap-south", "action": "left"}]},
        ("restore_targets", -1, "return_value"): {
            "restored": [{"target": "dev-south", "restored": OLD, "to_build": "532-1250-879-20210818",
                          "request_id": None, "at": iso(NOW)}],
            "left_alone": [{"target": "ap-south", "why": "it serves build 532-1250-879-20210818 (...), not ours"}],
            "evidence_url": "https://github.example/blob/abc/evidence.md"},
    }
    backout = assemble_backout(backout_run, {("approve_backout", -1): {"state": "skipped"}}, backout_xcoms)
    assert backout["restored"][0]["target"] == "dev-south" and backout["planned"] == ["dev-south"]
    assert backout["approval"] == "skipped" and backout["requested_by"] == "admin"
    detail = {**assemble_run(PLAN, run, states, xcoms, now=NOW), "backouts": [backout]}
    page = html(detail)
    assert "Backout" in page and "by admin" in page and "manual__backout" in page
    assert "dev-south restored to build 532-1250-879-20210818" in page
    assert "Left alone: ap-south" in page
    assert "soak &lt;b&gt;failed&lt;/b&gt;" in page and "<b>failed</b>" not in page
    assert "Backout" not in html({**detail, "backouts": []}).split("<h2>Targets</h2>")[0].split("<h1>")[1]


def test_targets_a_later_backout_restored_are_marked_and_not_counted_as_new():
    """The run's own records say what it promoted; after a backout the page must not say the target
    still serves the new build."""
    from rollout_status.status_data import apply_backouts

    run, states, xcoms = base_rows()
    detail = assemble_run(PLAN, run, states, xcoms, now=NOW)
    for t in detail["targets"]:
        t["serves_new"] = True
    detail["summary"]["serving_new"] = len(detail["targets"])
    dry = {"run_id": "manual__dry", "dry_run": True, "restored": [{"target": "ap-south", "to_build": "x"}]}
    done = {"run_id": "manual__backout", "dry_run": False,
            "restored": [{"target": "dev-south", "to_build": "532-1250-879-20210818", "at": iso(NOW)}]}
    apply_backouts(detail, [done, dry])
    marked = {t["target"]: t["backed_out"] for t in detail["targets"] if t["backed_out"]}
    assert list(marked) == ["dev-south"] and marked["dev-south"]["run_id"] == "manual__backout"
    assert detail["summary"]["serving_new"] == len(detail["targets"]) - 1
    page = html({**detail, "backouts": []})
    assert "backed out to 532-1250-879-20210818" in page
