"""Safety rules end to end (README.md: "How a rollout starts", "What happens when something fails",
"Pointing at the real systems"): dry run, refused input, freeze, one writer, idempotent reruns, and no
secret anywhere a person or a log could see it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from tests.harness.env import ROOT, sandbox_call
from tests.harness.scenario import run_scenario, set_variable
from tests.scenarios.test_fault_matrix import TARGETS, assert_all_new, promotions_per_target

WRITES = ("flags PATCH", "flags POST", "github PUT", "chlorine POST")


def writes(state) -> int:
    return sum(v for k, v in state["calls"].items() if k in WRITES)


def test_dry_run_shows_the_plan_and_writes_nothing(rollout_sandbox):
    build = sandbox_call(rollout_sandbox, "/_sandbox/state")["builds"]["new"]
    result = run_scenario(rollout_sandbox, faults=[], conf={"build_name": build, "dry_run": True})
    state = result["state"]
    assert result["run_state"] == "success"
    assert writes(state) == 0 and state["promotions"] == [] and state["evidence"]["commits"] == []
    assert result["tasks"]["dev_sjc04_carrier12.promote_dev_sjc04_carrier12"] == "skipped"
    plan = result["xcoms"]["build_verification.plan_rollout:return_value"]
    assert [row["target"] for row in plan["targets"]] == TARGETS
    assert all(row["current"] == state["images"]["previous"] and row["new"] == state["images"]["new"]
               for row in plan["targets"])
    assert f"immutableimage_{build}-prod" in plan["evidence_preview"]
    assert state["images"]["new"]["prod"] in plan["evidence_preview"]


def test_refused_conf_changes_nothing(rollout_sandbox):
    result = run_scenario(rollout_sandbox, faults=[], conf={"build_name": "../../etc/passwd; reboot"})
    assert result["run_state"] == "refused"
    assert "build_name" in result["error"]
    assert writes(result["state"]) == 0 and result["state"]["slack"] == []


def test_conf_image_ids_must_match_the_build(rollout_sandbox):
    build = sandbox_call(rollout_sandbox, "/_sandbox/state")["builds"]["new"]
    result = run_scenario(rollout_sandbox, faults=[], conf={"build_name": build, "image_ids": {"prod": "1234567"}})
    assert result["tasks"]["build_verification.verify_build"] == "failed"
    assert writes(result["state"]) == 0


def test_make_scenario_with_a_refused_conf_exits_0_and_writes_the_state(tmp_path):
    out = ROOT / "build" / "scenario-state.json"
    if out.exists():
        out.unlink()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'plugins'}{os.pathsep}{ROOT}"}
    env.pop("AIRFLOW_HOME", None)
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.harness.scenario", "--conf", '{"build_name": "not-a-build"}', "--port", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "refused" in proc.stdout
    state = json.loads(out.read_text())
    assert state["promotions"] == [] and state["evidence"]["commits"] == []


def test_a_superseded_rollout_never_touches_the_flag(rollout_sandbox):
    result = run_scenario(rollout_sandbox, faults=[], conf=None,
                          variables={"image_rollout_active_build": "999-9999-999-20991231"})
    state = result["state"]
    assert state["promotions"] == [] and writes(state) == 0
    assert any("superseded by newer build 999-9999-999-20991231" in m["text"] for m in state["slack"])
    # Not green: a distinct, labelled end (issue 9 item 8), and no rollback alarm on top.
    assert result["run_state"] == "failed", result["tasks"]
    assert result["tasks"]["rollout_end.superseded"] == "failed"
    assert result["tasks"]["rollout_end.rollback"] != "failed"
    assert any(m["text"].startswith("SUPERSEDED: rollout of") for m in state["slack"])


def test_freeze_holds_every_promotion_until_cleared(rollout_sandbox):
    """dag.test runs in this (main) thread; an on-call SRE in another clears the freeze later."""

    seen: dict = {}

    def sre():
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not seen.get("held"):
            state = sandbox_call(rollout_sandbox, "/_sandbox/state?autorecovery=0")
            seen["held"] = any("held by freeze" in m["text"] for m in state["slack"])
            time.sleep(0.5)
        time.sleep(5)  # several freeze polls later
        state = sandbox_call(rollout_sandbox, "/_sandbox/state?autorecovery=0")
        seen["promotions_while_frozen"] = len(state["promotions"])
        seen["incident_named"] = any("INC0012345" in m["text"] for m in state["slack"])
        set_variable("image_rollout_freeze", None)

    watcher = threading.Thread(target=sre, daemon=True)
    watcher.start()
    result = run_scenario(rollout_sandbox, faults=[], conf=None,
                          variables={"image_rollout_freeze": "INC0012345 fleet incident"})
    watcher.join(timeout=5)
    assert seen.get("held"), "the rollout never said it was held"
    assert seen["promotions_while_frozen"] == 0, "a promotion went through while frozen"
    assert seen["incident_named"]
    assert_all_new(result)


def test_rerun_writes_nothing_twice_and_no_secret_leaks(rollout_sandbox, capfd):
    first = run_scenario(rollout_sandbox, faults=[], conf=None)
    assert_all_new(first)
    before = first["state"]
    again = run_scenario(rollout_sandbox, faults=[], conf=None, reset=False)
    after = again["state"]
    assert again["run_state"] == "success", again["tasks"]
    assert promotions_per_target(after) == promotions_per_target(before)
    assert len(after["evidence"]["commits"]) == len(before["evidence"]["commits"])
    assert len(after["approval_requests"]) == len(before["approval_requests"])
    for key in ("flags PATCH", "github PUT"):
        assert after["calls"].get(key, 0) == before["calls"].get(key, 0), key
    # A second run of a finished build (dag.test's own run id, as a UI trigger's manual__ id) is a
    # no-op rerun (issue 11 item 1): it says so, and posts no second "complete".
    complete = [m for m in after["slack"] if "complete: all" in m["text"]]
    assert len(complete) == 1, [m["text"] for m in complete]
    noop = [m["text"] for m in after["slack"] if "no-op rerun" in m["text"]]
    assert len(noop) == 1 and first["run_id"] in noop[0], noop
    assert again["tasks"]["rollout_end.verify_flag_state"] == "skipped", again["tasks"]

    captured = capfd.readouterr()
    seen = {
        "logs": captured.out + captured.err,
        "xcom": json.dumps([first["xcoms"], again["xcoms"]], default=str),
        "evidence": json.dumps(after["evidence"]),
        "slack": json.dumps(after["slack"]),
        "change requests": json.dumps(after["approval_requests"]),
    }
    for where, text in seen.items():
        assert "sandbox-secret" not in text, f"a connection secret leaked into {where}"


def test_reloads_are_requested_from_chlorine_when_autorecovery_is_slow(rollout_sandbox):
    result = run_scenario(rollout_sandbox, faults=["autorecovery_slow:dev-sjc04-carrier12"], conf=None)
    assert_all_new(result)
    requested = [r for r in result["state"]["reloads"]
                 if r["carrier"] == "dev-sjc04-carrier12" and r["kind"] == "requested"]
    assert 1 <= len(requested) <= 3
