"""Issue 11 item 2 on the real scheduler: back a build out on demand, over the REST API as operators do.

Jenkins starts the rollout; once the canary ap-south is promoted (its start approved by ``sre-approver``),
``admin`` ends the rollout and triggers ``immutable_image_backout`` for dev-south, stage-south and ap-south;
``sre-approver`` answers the backout's prod start decision. The sandbox's flag must show those three back on
the previous build, and every other target as the rollout left it.
"""

from __future__ import annotations

import time

from tests.harness.operator_api import Operator
from tests.live.common import ANSWER_AFTER, PATCHING, asked_for, bake_seconds, promotions, slack_texts

BACKOUT = "immutable_image_backout"
BACKED_OUT = ("dev-south", "stage-south", "ap-south")
#: The backout's approval is asked right after its task's start: answered sooner than the scheduler has taken in
#: the task's deferral (seconds on a loaded machine), Airflow 3.3.2 fails it (see ``ANSWER_AFTER``).
ANSWER_BACKOUT_AFTER = max(ANSWER_AFTER, 12.0)
#: The sandbox's reloads, queue and change board sooner than seeded: only the plan's bake is waited out in full.
TIMING = {"approval_delay_seconds": 0.5, "queue_seconds": 0.2, "rebuild_seconds": 0.5, "reload_seconds": 0.5}


def test_backout_restores_the_targets_asked_for_and_leaves_the_rest(live):
    admin = Operator(live.stack.base_url, "admin", live.stack.passwords["admin"], dag_id=BACKOUT)
    approver = Operator(live.stack.base_url, "sre-approver", live.stack.passwords["sre-approver"], dag_id=BACKOUT)
    live.stack.wait_dag(BACKOUT)
    admin.ok("PATCH", f"/dags/{BACKOUT}", {"is_paused": False})
    run_id = live.start({"timing": TIMING})
    state = live.drive(run_id, lambda state, tis: promotions(state, "ap-south"), timeout=bake_seconds() + 240,
                       what="ap-south promoted")
    live.admin.end_run(run_id)  # the SRE stops the rollout before backing it out
    new, previous = state["images"]["new"], state["images"]["previous"]
    before = live.sandbox.state()["flag"]["rules"]
    promoted = sorted(t for t, served in before.items() if served == new)
    assert set(BACKED_OUT) <= set(promoted), before

    backout_id = f"backout__{state['builds']['new']}__{len(live.started)}"
    status, body = admin.trigger(backout_id, {"build_name": state["builds"]["new"], "targets": list(BACKED_OUT),
                                              "reason": "autorecovery failures in ap-south"})
    assert status in (200, 201), f"backout trigger answered {status}: {body}"
    live.runs.append(backout_id)
    answered = []
    deadline = time.monotonic() + 240
    while admin.run_state(backout_id) not in ("success", "failed"):
        assert time.monotonic() < deadline, f"backout not finished: {admin.task_states(backout_id)}"
        for detail in approver.pending_hitl(backout_id):
            if asked_for(detail) >= ANSWER_BACKOUT_AFTER:
                answered.append(approver.answer_hitl(backout_id, detail["task_instance"]["task_id"], "Approve"))
        time.sleep(1)
    assert admin.run_state(backout_id) == "success", admin.task_states(backout_id)
    print(f"\n[live] backout finished {time.monotonic() - deadline + 240:.0f}s after its trigger")
    assert [status for status, _ in answered] == [200], answered

    after = live.sandbox.state()
    rules = after["flag"]["rules"]
    assert {t: rules[t] for t in BACKED_OUT} == {t: previous for t in BACKED_OUT}
    assert {t: rules[t] for t in promoted if t not in BACKED_OUT} == {t: new for t in promoted if t not in BACKED_OUT}
    assert all(rules[t] == before[t] for t in rules if t not in BACKED_OUT)
    assert any(text.startswith(f"BACKOUT of immutable image build {state['builds']['new']} by admin")
               for text in slack_texts(after, PATCHING))
    assert "### Backout" in after["evidence"]["commits"][-1]["content"]
