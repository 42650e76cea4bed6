"""Issue 11 item 3 end to end with ``dag.test`` against the sandbox: an SRE holds one build's rollout
mid-way and resumes it. (Item 1, a rerun of a finished rollout being a no-op, is tested on the real
scheduler: tests/live/test_one_run_per_build.py.)"""

from __future__ import annotations

import json
import threading
import time

from tests.harness.env import sandbox_call
from tests.harness.scenario import run_scenario, set_variable
from tests.scenarios.test_fault_matrix import assert_all_new

HOLD = "image_rollout_hold"


def test_a_hold_stops_one_build_mid_rollout_until_it_is_removed(rollout_sandbox):
    """dag.test runs in this thread; the SRE, in another, holds the build once dev-south is promoted."""

    seen: dict = {}

    def sre():
        deadline = time.monotonic() + 180
        build = sandbox_call(rollout_sandbox, "/_sandbox/state")["builds"]["new"]
        while time.monotonic() < deadline:
            state = sandbox_call(rollout_sandbox, "/_sandbox/state?autorecovery=0")
            if any(p["target"] == "dev-south" for p in state["promotions"]):
                break
            time.sleep(0.2)
        set_variable(HOLD, json.dumps({build: {"by": "jdoe", "reason": "INC0099 dal10 alerts"}}))
        while time.monotonic() < deadline and not seen.get("held"):
            state = sandbox_call(rollout_sandbox, "/_sandbox/state?autorecovery=0")
            seen["held"] = [m["text"] for m in state["slack"] if "HELD" in m["text"]]
            time.sleep(0.3)
        before = (len(state["promotions"]), len(state["evidence"]["commits"]))
        time.sleep(6)  # several hold polls (2 s in the sandbox plan) later
        state = sandbox_call(rollout_sandbox, "/_sandbox/state?autorecovery=0")
        seen["while_held"] = (before, (len(state["promotions"]), len(state["evidence"]["commits"])))
        seen["held_messages"] = [m["text"] for m in state["slack"] if "HELD" in m["text"]]
        set_variable(HOLD, None)

    person = threading.Thread(target=sre, daemon=True)
    person.start()
    result = run_scenario(rollout_sandbox, faults=[], conf=None)
    person.join(timeout=5)
    assert seen.get("held"), "the rollout never said it was held"
    before, after = seen["while_held"]
    assert before == after, f"promotions/evidence commits went on while held: {before} -> {after}"
    assert before[0] < 16, "the hold came too late to hold anything"
    assert len(seen["held_messages"]) == 1, seen["held_messages"]  # one task held: said once
    assert "jdoe" in seen["held_messages"][0] and "INC0099 dal10 alerts" in seen["held_messages"][0]
    assert any("lifted" in m["text"] for m in result["state"]["slack"])
    assert_all_new(result)
