"""The watcher's search for a new build, against the sandbox's Jenkins."""

from __future__ import annotations

from image_rollout.plan import load_plan
from image_rollout.watcher import newest_rollout_candidate

PLAN = load_plan("sandbox")


def test_finds_the_newest_successful_build_started_by_smith_sync(sandbox):
    new = sandbox.state()["builds"]["new"]
    assert newest_rollout_candidate(PLAN) == {"build_name": new, "build_number": 434}


def test_a_failed_build_is_not_rolled_out(sandbox):
    sandbox.faults("jenkins_build_failed")
    previous = sandbox.state()["builds"]["previous"]
    found = newest_rollout_candidate(PLAN)
    assert found is None or found["build_name"] == previous
