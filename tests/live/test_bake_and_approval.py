"""Issue 9, invariants 1 (canary precondition) and 3 (separation of duties), on one rollout.

The operator marks ``bake.wait_bake`` success over the REST API as soon as it defers; the
triggering user ``jenkins`` then tries to approve the prod start; the assigned approver
``sre-approver`` approves. The sandbox must show ap-south promoted no earlier than stage-south's
LaunchDarkly ``appliedDate`` plus the bake, a Slack hold message about the bake, and evidence naming
the real decider.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.live.common import (
    APPROVE,
    BAKE,
    PATCHING,
    bake_seconds,
    parse_time,
    promotions,
    slack_texts,
)


@pytest.fixture(scope="module")
def rollout(live_stack):
    live = live_stack
    obs: dict = {}
    try:
        run_id = live.start()
        live.admin.wait_task(run_id, BAKE, {"deferred"}, timeout=240)
        obs["marked_at"] = datetime.now(UTC)
        status, body = live.jenkins.mark(run_id, BAKE, "success", note="bake looks fine, moving on")
        obs["mark"] = {"user": "jenkins", "status": status, "body": str(body)[:300]}
        if status == 403:  # not the point here: whoever may mark it, the bake must still hold
            status, body = live.admin.mark(run_id, BAKE, "success")
            obs["mark"] = {"user": "admin", "status": status, "body": str(body)[:300]}
        assert 200 <= status < 300, obs["mark"]

        def asked(state, tis):
            return bool(live.approver.pending_hitl(run_id)) or promotions(state, "ap-south")

        live.drive(run_id, asked, timeout=180, approve=False, what="the prod approval to be asked")
        for detail in live.approver.pending_hitl(run_id)[:1]:
            live.wait_settled(run_id, detail)  # a person reads the request first (see PARKED_SETTLE)
        # the triggering user answers its own prod start
        status, body = live.jenkins.answer_hitl(run_id, APPROVE, "Approve")
        obs["jenkins_answer"] = {"status": status, "body": str(body)[:300]}
        time.sleep(8)
        obs["after_jenkins"] = live.sandbox.state()
        # the assigned approver answers
        status, body = live.approver.answer_hitl(run_id, APPROVE, "Approve")
        obs["approver_answer"] = {"status": status, "body": str(body)[:300]}
        obs["approver_at"] = datetime.now(UTC)

        live.drive(run_id, lambda state, tis: promotions(state, "ap-south"), timeout=bake_seconds() + 150,
                   what="ap-south promoted")
        promoted = time.monotonic()

        def recorded(state, tis):  # the decision is in the evidence, or it will not be
            named = any("sre-approver" in (c.get("content") or "") for c in state["evidence"]["commits"])
            return named or time.monotonic() - promoted > 30

        obs["state"] = live.drive(run_id, recorded, timeout=60, what="the approval recorded in the evidence")
        obs["tis"] = live.admin.task_states(run_id)
    except Exception as exc:  # keep what was seen; each test says what is missing
        obs["error"] = f"{type(exc).__name__}: {exc}"
        obs.setdefault("state", live.sandbox.state())
    finally:
        live.finish()
    return obs


def _stage_south_applied(state: dict) -> datetime:
    applied = [r.get("appliedDate") for r in state.get("approval_requests") or []
               if "stage-south" in (r.get("targets") or []) and r.get("appliedDate")]
    if applied:
        return parse_time(max(applied))
    stage = promotions(state, "stage-south")
    assert stage, "stage-south was never promoted"
    return parse_time(stage[-1]["time"])


def test_marked_success_on_the_bake_does_not_promote_the_canary_early(rollout):
    state = rollout["state"]
    canary = promotions(state, "ap-south")
    assert canary, f"ap-south never promoted ({rollout.get('error')})"
    earliest = _stage_south_applied(state) + timedelta(seconds=bake_seconds())
    promoted = parse_time(canary[0]["time"])
    assert promoted >= earliest, (
        f"ap-south promoted at {promoted:%H:%M:%S.%f}, {(earliest - promoted).total_seconds():.1f}s before "
        f"stage-south's appliedDate + bake ({earliest:%H:%M:%S.%f}); bake marked success at "
        f"{rollout['marked_at']:%H:%M:%S.%f} by {rollout['mark']['user']}")
    said = [t for t in slack_texts(state, PATCHING) if "bake" in t.lower()]
    assert said, f"no message in {PATCHING} says the canary holds for the bake: {slack_texts(state, PATCHING)}"


def test_the_triggering_user_cannot_approve_the_prod_start(rollout):
    answer = rollout.get("jenkins_answer")
    assert answer, rollout.get("error")
    after = rollout["after_jenkins"]
    assert not promotions(after, "ap-south"), (
        f"ap-south promoted after the triggering user 'jenkins' approved (HITL answered {answer['status']})")
    # refused by the HITL API (403), or accepted there but not taken as the decision
    assert answer["status"] == 403 or not any(decided_by(c, "jenkins") for c in after["evidence"]["commits"]), answer
    assert 200 <= rollout["approver_answer"]["status"] < 300, rollout["approver_answer"]
    assert promotions(rollout["state"], "ap-south"), f"sre-approver's approval did not proceed: {rollout.get('error')}"


def test_the_evidence_records_who_decided(rollout):
    commits = rollout["state"]["evidence"]["commits"]
    assert commits, "no evidence written"
    assert decided_by(commits[-1], "sre-approver"), "the evidence does not name the decider sre-approver"
    assert "approve" in commits[-1]["content"].lower()
    for commit in commits:
        for wrong in ("jenkins", "unknown"):
            assert not decided_by(commit, wrong), f"evidence commit {commit['sha'][:10]} says the decision was {wrong}'s"


def decided_by(commit: dict, who: str) -> bool:
    """Whether the evidence names ``who`` as the one who decided the prod start (not merely who triggered)."""
    return any(f"by {who}" in line for line in (commit.get("content") or "").splitlines()
               if "decision for" in line or "approved in airflow" in line.lower())
