"""Issue 11 item 3 on the real scheduler: an SRE holds one build's rollout over the REST API, as from the
UI's Variables page, and resumes it by deleting the entry.

While held, nothing of the build is written (flag, change requests, evidence), the hold is said in the
patching channel naming who and why, and the scheduler's retries and polls change nothing; once the entry
is gone the rollout says so and goes on to the end, each target promoted once.
"""

from __future__ import annotations

import json
import time

from tests.live.common import PATCHING, promotions, slack_texts

HOLD = "image_rollout_hold"
WRITES = ("flags PATCH", "flags POST", "flags DELETE", "github PUT")
TARGETS = 16


def writes(state: dict) -> dict:
    return {k: state["calls"].get(k, 0) for k in WRITES}


def test_a_hold_set_over_the_rest_api_stops_every_write_until_it_is_deleted(live):
    run_id = live.start()
    build = live.build()
    try:
        live.drive(run_id, lambda state, tis: promotions(state, "dev-south"), timeout=240, what="dev-south promoted")
        live.admin.set_variable(HOLD, json.dumps({build: {"by": "jdoe", "reason": "INC0099 dal10 alerts"}}))
        held = live.drive(run_id, lambda state, tis: [t for t in slack_texts(state, PATCHING) if "HELD" in t],
                          timeout=180, what="the rollout to say it is held")
        before = writes(held)
        time.sleep(30)  # many hold polls (2 s in the plan) and the reload gate's grace period later
        during = live.sandbox.state()
        assert writes(during) == before, f"written while held: {before} -> {writes(during)}"
        said = [t for t in slack_texts(during, PATCHING) if "HELD" in t]
        assert said and all("jdoe" in t and "INC0099 dal10 alerts" in t for t in said), said
        assert len(promotions(during, "ap-south")) == 0
    finally:
        live.admin.delete_variable(HOLD)
    assert live.drive(run_id, lambda state, tis: live.admin.run_state(run_id) in ("success", "failed"),
                      timeout=480, what="the rollout to end after the hold was deleted")
    state = live.sandbox.state()
    assert live.admin.run_state(run_id) == "success"
    assert any("lifted" in t for t in slack_texts(state, PATCHING))
    targets = {p["target"] for p in state["promotions"]}
    assert len(targets) == TARGETS and all(len(promotions(state, t)) == 1 for t in targets)
    assert all(rule == state["images"]["new"] for rule in state["flag"]["rules"].values())
