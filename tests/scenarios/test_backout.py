"""Backout on demand (issue 11 item 2) end to end with ``dag.test``: after a rollout that stopped at the
prod train (the change board declines it), back out several targets, one of them through a train, after a
dry run that writes nothing and refusals that write nothing either."""

from __future__ import annotations

import pytest

from image_rollout.contracts import BACKOUT_RESTORE_TASK as RESTORE_TASK
from tests.harness.env import sandbox_call
from tests.harness.scenario import BACKOUT, run_scenario, set_variable
from tests.scenarios.test_fault_matrix import MATRIX_TIMING, PATCHING, TARGETS

WRITES = ("flags PATCH", "flags POST", "flags DELETE", "github PUT")
PROMOTED = TARGETS[: TARGETS.index("stage-south") + 1]
REASON = "autorecovery failures after the new image"


def writes(state) -> dict:
    return {k: state["calls"].get(k, 0) for k in WRITES}


def backout(base_url: str, conf: dict) -> dict:
    return run_scenario(base_url, faults=[], conf=conf, reset=False, dag_id=BACKOUT)


@pytest.fixture(scope="module")
def rolled_out(rollout_sandbox):
    """The new build serves dev .. stage-south; the prod train was declined, so prod serves the previous one."""
    result = run_scenario(rollout_sandbox, faults=["train_rejected"], conf=None, reset={"timing": MATRIX_TIMING})
    state = result["state"]
    new, previous = state["images"]["new"], state["images"]["previous"]
    assert all(state["flag"]["rules"][t] == new for t in PROMOTED), state["flag"]["rules"]
    assert all(state["flag"]["rules"][t] == previous for t in TARGETS if t not in PROMOTED)
    return {"base_url": rollout_sandbox, "build": state["builds"]["new"], "previous_build": state["builds"]["previous"],
            "new": new, "previous": previous}


def test_dry_run_shows_the_plan_and_writes_nothing(rolled_out):
    result = backout(rolled_out["base_url"], {"build_name": rolled_out["build"], "targets": "all",
                                              "reason": REASON, "dry_run": True})
    state = result["state"]
    assert result["run_state"] == "success", result
    assert result["tasks"][RESTORE_TASK] == "skipped" and result["tasks"]["file_backout_requests"] == "skipped"
    plan = result["xcoms"]["resolve_backout:return_value"]
    actions = {d["target"]: d["action"] for d in plan["decisions"]}
    assert [t for t in TARGETS if actions[t] == "restore"] == PROMOTED
    assert all(d["to"] == rolled_out["previous"] for d in plan["decisions"] if d["action"] == "restore")
    assert all(state["flag"]["rules"][t] == rolled_out["new"] for t in PROMOTED)
    assert any(m["text"].startswith("DRY RUN: Backout of immutable image build") for m in state["slack"])
    assert "Backout" not in state["evidence"]["commits"][-1]["content"]
    rerun = backout(rolled_out["base_url"], {"build_name": rolled_out["build"], "targets": ["dev-south"],
                                             "reason": REASON, "dry_run": True})
    assert writes(rerun["state"]) == writes(state), "a dry run wrote to LaunchDarkly or GitHub"


@pytest.mark.parametrize("conf, problem", [
    ({"build_name": "999-9999-999-20991231"}, "unknown build 999-9999-999-20991231"),
    ({"to_build": "111-1111-111-20000101"}, "unknown to_build 111-1111-111-20000101"),
])
def test_an_unknown_build_is_refused_before_any_write(rolled_out, conf, problem):
    sandbox = rolled_out["base_url"]
    start = sandbox_call(sandbox, "/_sandbox/state")
    result = backout(sandbox, {"build_name": rolled_out["build"], "targets": "all", "reason": REASON, **conf})
    assert result["tasks"]["resolve_backout"] == "failed"
    assert result["tasks"][RESTORE_TASK] == "upstream_failed"
    assert writes(result["state"]) == writes(start)
    assert any(problem in m["text"] and m["channel"] == PATCHING for m in result["state"]["slack"]), problem


def test_an_unknown_target_is_refused_by_the_form(rolled_out):
    result = backout(rolled_out["base_url"], {"build_name": rolled_out["build"], "targets": ["dev-south", "mars-north"],
                                              "reason": REASON})
    assert result["run_state"] == "refused" and "targets" in result["error"]


def test_backout_of_several_targets_through_the_promotions_path(rolled_out):
    sandbox, build = rolled_out["base_url"], rolled_out["build"]
    conf = {"build_name": build, "targets": ["dev-south", "stage-south", "ap-south"], "reason": REASON}
    result = backout(sandbox, conf)
    state = result["state"]
    assert result["run_state"] == "success", result["tasks"]
    rules = state["flag"]["rules"]
    assert rules["dev-south"] == rules["stage-south"] == rolled_out["previous"]
    assert all(rules[t] == rolled_out["new"] for t in PROMOTED if t not in ("dev-south", "stage-south"))
    assert rules["ap-south"] == rolled_out["previous"]
    # stage-south went through a train keyed for the backout, dev-south through a direct write
    restores = [p for p in state["promotions"] if p["build"] == rolled_out["previous_build"]
                and p["from_build"] == build]
    assert sorted(p["target"] for p in restores) == ["dev-south", "stage-south"]
    by = {p["target"]: p for p in restores}
    assert by["dev-south"]["request_id"] is None
    request = next(r for r in state["approval_requests"] if r["_id"] == by["stage-south"]["request_id"])
    assert f"Rollout-Key: immutable-image/{build}/backout/stage-south" in request["description"]
    assert result["tasks"]["approve_backout"] == "skipped", "no prod target changes: no start decision asked"
    # evidence and Slack name what was restored and what was left alone
    record = state["evidence"]["commits"][-1]
    assert f"immutable-image/{build}/backout-" in record["message"]
    section = record["content"].split("### Backout")[-1]
    assert "dev-south restored to build " + rolled_out["previous_build"] in section
    assert "stage-south restored to build " in section and request["_id"] in section
    assert "ap-south left alone: it already serves build " + rolled_out["previous_build"] in section
    assert REASON in section
    assert any(m["text"].startswith(f"BACKOUT of immutable image build {build}") and m["channel"] == PATCHING
               and "Restored: dev-south, stage-south" in m["text"] for m in state["slack"])

    # the same backout again: nothing serves the build there any more, nothing is written to the flag
    again = backout(sandbox, conf)
    assert again["run_state"] == "success"
    after = again["state"]
    assert len(after["promotions"]) == len(state["promotions"])
    assert len(after["approval_requests"]) == len(state["approval_requests"])
    assert after["calls"].get("flags PATCH", 0) == state["calls"].get("flags PATCH", 0)
    assert "dev-south left alone: it already serves" in after["evidence"]["commits"][-1]["content"]


def test_a_freeze_holds_the_backout_until_cleared(rolled_out):
    """dag.test runs in this thread; an on-call SRE in another clears the freeze after the hold is announced."""
    import threading
    import time


    sandbox = rolled_out["base_url"]
    start = sandbox_call(sandbox, "/_sandbox/state?autorecovery=0")
    seen: dict = {}

    def sre():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not seen.get("held"):
            state = sandbox_call(sandbox, "/_sandbox/state?autorecovery=0")
            seen["held"] = any("held by freeze" in m["text"] for m in state["slack"][len(start["slack"]):])
            time.sleep(0.3)
        time.sleep(5)  # several freeze polls later
        seen["while_frozen"] = writes(sandbox_call(sandbox, "/_sandbox/state?autorecovery=0"))
        set_variable("image_rollout_freeze", None)

    watcher = threading.Thread(target=sre, daemon=True)
    watcher.start()
    result = run_scenario(sandbox, faults=[], reset=False, dag_id=BACKOUT, variables={"image_rollout_freeze": "INC7"},
                          conf={"build_name": rolled_out["build"], "targets": ["prestage-south"], "reason": REASON})
    watcher.join(timeout=5)
    assert seen.get("held"), "the backout never said it was held"
    assert seen["while_frozen"] == writes(start), "the backout wrote while frozen"
    assert result["state"]["flag"]["rules"]["prestage-south"] == rolled_out["previous"]


def test_make_scenario_refuses_a_dag_it_does_not_run(capsys):
    from tests.harness.scenario import main

    assert main(["--dag", "immutable_image_nothing"]) == 2
    assert "immutable_image_backout" in capsys.readouterr().err
