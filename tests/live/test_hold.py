"""Stop-the-line on the real scheduler, set over the REST API as from the UI's Variables page: a hold on one
build's rollout (issue 11 item 3), then the freeze of every rollout (issue 4).

While held or frozen, nothing of the build is written (flag, change requests, evidence), the patching
channel is told why, and the scheduler's retries and polls change nothing; once the Variable is deleted
the rollout goes on to the end, each target promoted once.
"""

from __future__ import annotations

import json
import time

from tests.live.common import PATCHING, promotions, slack_texts

HOLD = "image_rollout_hold"
FREEZE = "image_rollout_freeze"
WRITES = ("flags PATCH", "flags POST", "flags DELETE", "github PUT")
TARGETS = 16


def writes(state: dict) -> dict:
    return {k: state["calls"].get(k, 0) for k in WRITES}


def stopped_while_set(live, run_id: str, key: str, value: str, said: str, seconds: float) -> list[str]:
    """Set the Variable, wait until the rollout says ``said``, and check that nothing is written for
    ``seconds``; return what it said. The Variable is deleted in any case."""
    try:
        live.admin.set_variable(key, value)
        told = live.drive(run_id, lambda state, tis: [t for t in slack_texts(state) if said in t],
                          timeout=180, what=f"the rollout to say {said!r}")
        before = writes(told)
        time.sleep(seconds)
        during = live.sandbox.state()
        assert writes(during) == before, f"written while {key} was set: {before} -> {writes(during)}"
        assert len(promotions(during, "ap-south")) == 0
        return [t for t in slack_texts(during) if said in t]
    finally:
        live.admin.delete_variable(key)


def test_a_hold_then_the_freeze_set_over_the_rest_api_stop_every_write_until_deleted(live):
    run_id = live.start()
    build = live.build()
    live.drive(run_id, lambda state, tis: promotions(state, "dev-south"), timeout=240, what="dev-south promoted")
    # many hold polls (2 s in the plan) and the reload gate's grace period
    said = stopped_while_set(live, run_id, HOLD, json.dumps({build: {"by": "jdoe", "reason": "INC0099 dal10 alerts"}}),
                             "HELD", 30)
    assert said and all("jdoe" in t and "INC0099 dal10 alerts" in t for t in said), said
    live.drive(run_id, lambda state, tis: [t for t in slack_texts(state, PATCHING) if "lifted" in t],
               timeout=120, what="the hold to be said lifted")
    said = stopped_while_set(live, run_id, FREEZE, "INC0100 change freeze", "held by freeze", 15)
    assert said and all("INC0100 change freeze" in t for t in said), said
    assert live.drive(run_id, lambda state, tis: live.admin.run_state(run_id) in ("success", "failed"),
                      timeout=480, what="the rollout to end after the freeze was deleted")
    state = live.sandbox.state()
    assert live.admin.run_state(run_id) == "success"
    targets = {p["target"] for p in state["promotions"]}
    assert len(targets) == TARGETS and all(len(promotions(state, t)) == 1 for t in targets)
    assert all(rule == state["images"]["new"] for rule in state["flag"]["rules"].values())
