"""Issue 11 item 1 on the real scheduler: one rollout per build, whatever the run id.

``admin`` triggers the build again as the UI does (no run id: Airflow names it ``manual__…``):
* while Jenkins's run of the build is active, the second run is refused at verification, naming it;
* once the build's rollout finished (its record in GitHub, the system of record, says so), the
  second run is a no-op rerun: it says so, writes nothing and posts no second "rollout complete".
"""

from __future__ import annotations

import json

from tests.live.common import PATCHING, VARIABLES, VERIFY, slack_texts

WRITES = ("flags PATCH", "flags POST", "flags DELETE", "github PUT", "chlorine POST")
RECORD = "train_evidence/rollouts/smith-immutable-image/immutableimage_{}_rollout.json"


def trigger_from_the_ui(live, build: str) -> str:
    """``POST dagRuns`` without a run id, as the UI's Trigger button: Airflow names the run ``manual__…``."""
    status, body = live.admin.call("POST", f"/dags/{live.admin.dag_id}/dagRuns",
                                   {"logical_date": None, "conf": {"build_name": build}})
    assert status in (200, 201), f"trigger answered {status}: {body}"
    run_id = body["dag_run_id"]
    assert run_id.startswith("manual__"), run_id
    live.runs.append(run_id)
    return run_id


def test_a_second_run_of_an_active_build_is_refused_naming_the_first(live):
    first = live.start()
    assert live.admin.wait_task(first, VERIFY, {"success"}, timeout=180) == "success"
    build = live.build()
    second = trigger_from_the_ui(live, build)
    assert live.admin.wait_task(second, VERIFY, {"success", "failed"}, timeout=180,
                                fail_on_terminal=False) == "failed"
    assert live.admin.run_state(first) == "running"
    refused = [t for t in slack_texts(live.sandbox.state(), PATCHING) if "REFUSED" in t]
    assert len(refused) == 1 and first in refused[0] and build in refused[0], refused
    claims = [c for c in live.sandbox.state()["github_commits"] if c["path"] == RECORD.format(build)]
    assert len(claims) == 1 and first in claims[0]["message"], claims  # the second run claimed nothing


def test_a_run_of_a_finished_build_is_a_no_op_rerun(live):
    live.sandbox.reset({})
    for key in VARIABLES:
        live.admin.delete_variable(key)
    build = live.build()
    finished_by = f"rollout__{build}"
    record = {"build_name": build, "run_id": finished_by, "claimed_at": "2026-11-20T08:00:00Z",
              "finished_at": "2026-11-24T17:30:00Z"}
    live.sandbox.commit_file(RECORD.format(build), json.dumps(record, indent=2) + "\n",
                             f"Rollout of immutable image build {build} finished by run {finished_by}")
    before = live.sandbox.state()["calls"]
    run_id = trigger_from_the_ui(live, build)
    assert live.admin.wait_run(run_id, timeout=240) == "success"
    state = live.sandbox.state()
    noop = [t for t in slack_texts(state) if "no-op rerun" in t]
    assert len(noop) == 1 and finished_by in noop[0] and run_id in noop[0], noop
    assert not [t for t in slack_texts(state) if "complete: all" in t]
    assert state["promotions"] == []
    assert {k: state["calls"].get(k, 0) for k in WRITES} == {k: before.get(k, 0) for k in WRITES}
    assert live.admin.task_state(run_id, "rollout_end.verify_flag_state") == "skipped"
