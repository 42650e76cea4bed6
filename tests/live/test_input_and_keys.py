"""Issue 9, invariants 6 (strict input) and 7 (idempotency keys that cannot collide with a person's work).

* The new build's ``image_ids.json`` carries an id with a trailing newline, or written in non-ASCII
  digits: verification fails with a clear error and nothing is written anywhere.
* Before the rollout, a person commits to the evidence path with the rollout's own commit message but
  other content: the stage change requests cite the rollout's own commit, never the person's.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.live.common import ROLLBACK, VERIFY, promotions

WRITES = ("flags PATCH", "flags POST", "flags DELETE", "github PUT", "chlorine POST")
NEW_IDS = {"dev": "8935101", "prod": "8935154", "prodfr2": "8935160", "stage": "8935122"}


@pytest.mark.parametrize("prod_id", ["8935154\n", "\uff18\uff19\uff13\uff15\uff11\uff15\uff14"],
                         ids=["trailing-newline", "fullwidth-digits"])
def test_loose_image_ids_fail_verification_before_any_write(live, prod_id):
    artifact = json.dumps({**NEW_IDS, "prod": prod_id}, ensure_ascii=False, indent=2) + "\n"
    run_id = live.start({"jenkins": {"new_build": {"image_ids_json": artifact}}})
    verify = live.admin.wait_task(run_id, VERIFY, {"success", "failed", "upstream_failed"}, timeout=180,
                                  fail_on_terminal=False)
    time.sleep(10)  # what the run would write next, it writes within seconds
    state = live.sandbox.state()
    writes = {k: state["calls"].get(k, 0) for k in WRITES if state["calls"].get(k)}
    assert verify == "failed", f"verify_build {verify} on an image id {prod_id!r}; writes since: {writes}"
    assert state["promotions"] == [], [p["target"] for p in state["promotions"]]
    assert state["evidence"]["commits"] == [] and not state.get("github_commits")
    assert all(rules == state["images"]["previous"] for rules in state["flag"]["rules"].values())
    assert not writes, writes
    # The run's colour (item 8): failed, and the stop is reported once, by the task that stopped it; the
    # rollback has nothing to restore and raises no second, misleading alarm.
    assert live.admin.wait_run(run_id, timeout=120) == "failed"
    assert live.admin.task_state(run_id, ROLLBACK) != "failed"
    assert not [m for m in state["slack"] if "ROLLBACK" in m["text"].upper()]


def test_a_commit_with_the_rollout_message_but_not_its_key_is_not_taken_as_ours(live):
    manual: dict = {}

    def commit_by_hand():
        state = live.sandbox.state()
        build = state["builds"]["new"]
        path = f"train_evidence/smith-immutable-image/immutableimage_{build}_evidence.md"
        text = (f"# Evidence for immutable image build {build}\n\nDraft by hand, ids of the previous build:\n"
                + json.dumps(state["images"]["previous"], indent=2) + "\n")
        manual["sha"] = live.sandbox.commit_file(path, text, f"Add evidence for immutable image build {build}")
        manual["build"] = build

    run_id = live.start(before_trigger=commit_by_hand)

    def stage_promoted(state, tis):
        return promotions(state, "stage-dal10-carrier0") and promotions(state, "stage-south")

    state = live.drive(run_id, stage_promoted, timeout=240, what="both stage targets promoted")
    commits = {c["sha"]: c for c in state.get("github_commits") or state["evidence"]["commits"]}
    contents = {c["sha"]: c.get("content") for c in state["evidence"]["commits"]}
    for target in ("stage-dal10-carrier0", "stage-south"):
        cited = promotions(state, target)[-1]["evidence_sha"]
        assert cited, f"{target}'s change request cites no evidence commit"
        assert cited != manual["sha"], f"{target}'s change request cites the commit made by hand"
        assert cited in commits, f"{target} cites {cited}, not a commit of the repository"
        text = contents.get(cited) or ""
        assert NEW_IDS["dev"] in text and manual["build"] in text, f"{target} cites a commit without the build's ids"
