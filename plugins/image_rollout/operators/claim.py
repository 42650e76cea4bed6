"""One rollout per build, whatever the run id (issue 11 item 1).

A UI trigger gets a ``manual__...`` run id, so Airflow's 409 on ``rollout__<build>`` does not stop a
second run of the same build. The build's rollout record in GitHub (``plan.rollout_record_path``)
says which run claimed the build and when the rollout finished; Airflow says whether that run is
still active. The claim is written with GitHub's compare-and-swap (create only if absent, or update
only the version read), so of two runs verifying at once exactly one claims the build; the other
reads the record again and is refused.
"""

from __future__ import annotations

import json

from airflow.sdk.exceptions import AirflowFailException

from image_rollout import lazy_module
from image_rollout.contracts import iso, utcnow
from image_rollout.plan import RolloutPlan

pc = lazy_module("image_rollout.preconditions")

#: How often a claim that lost a race to another run's write is decided again.
CLAIM_ATTEMPTS = 4


def read_record(github, plan: RolloutPlan, build_name: str) -> tuple[dict | None, str | None]:
    """The build's rollout record and its blob sha (None, None when no run claimed it yet)."""
    path = plan.rollout_record_path(build_name)
    found = github.get_file(path)
    if found is None:
        return None, None
    try:
        return pc.parse_rollout_record(found[0], build_name), found[1]
    except pc.MalformedRolloutRecord as exc:
        # Nothing is decided on a record that cannot be read, and retrying will not mend it.
        raise AirflowFailException(f"{exc}: fix {path} in the evidence repository (its history shows "
                                   "what the rollout wrote); nothing was written") from None


def run_state(ti, run_id: str) -> str | None:
    """Airflow's state of a run of this DAG, or None when Airflow has no such run (deleted)."""
    if not ti.get_dr_count(dag_id=ti.dag_id, run_ids=[run_id]):
        return None
    state = ti.get_dagrun_state(dag_id=ti.dag_id, run_id=run_id)
    return str(getattr(state, "value", state))


def decide(ti, github, plan: RolloutPlan, build_name: str, run_id: str) -> tuple[pc.Claim, str, dict | None, str | None]:
    """Read the record and the claimant's state: ``(decision, why, record, blob sha)``. Reads only."""
    record, sha = read_record(github, plan, build_name)
    state = None
    if record is not None and record["run_id"] != run_id and not record.get("finished_at"):
        state = run_state(ti, record["run_id"])
    decision, why = pc.claim_decision(record, run_id=run_id, claimant_state=state)
    return decision, why, record, sha


def _text(record: dict) -> str:
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def claim(ti, github, plan: RolloutPlan, build_name: str, run_id: str) -> tuple[pc.Claim, str, dict | None]:
    """Decide, and when the build is free take it: a write that lost the race to another run decides again."""
    # Imported here, not at the top: the hooks (requests, aiohttp) would weigh on every DAG parse.
    from image_rollout.hooks._http import ExternalSystemError

    path = plan.rollout_record_path(build_name)
    for _ in range(CLAIM_ATTEMPTS):
        decision, why, record, sha = decide(ti, github, plan, build_name, run_id)
        if decision != "claim":
            return decision, why, record
        new = {"build_name": build_name, "run_id": run_id, "claimed_at": iso(utcnow()), "finished_at": None}
        message = (f"Claim rollout of immutable image build {build_name} for run {run_id}\n\n{why}\n\n"
                   + pc.key_line(pc.rollout_key(build_name, "claim")))
        try:
            github.put_file(path, _text(new), message, sha=sha, create_only=sha is None)
        except ExternalSystemError as exc:
            if exc.status == 409:
                continue  # another run wrote the record since it was read: decide again on what it wrote
            raise
        return "claim", why, new
    raise RuntimeError(f"the rollout record {path} kept changing while claiming it; try again")


def holder(github, plan: RolloutPlan, build_name: str, run_id: str) -> str | None:
    """Before a write: why this run no longer owns the build's rollout, or None when it does.

    A run that verified before records existed (no record) keeps its old behaviour.
    """
    record, _ = read_record(github, plan, build_name)
    if record is None or (record["run_id"] == run_id and not record.get("finished_at")):
        return None
    if record.get("finished_at"):
        return f"run {record['run_id']} finished the rollout of {build_name} at {record['finished_at']}"
    return f"run {record['run_id']} took over the rollout of {build_name} at {record.get('claimed_at')}"


def mark_finished(github, plan: RolloutPlan, build_name: str, run_id: str) -> dict | None:
    """Record in GitHub that this run finished the build's rollout (so a rerun is a no-op).

    Updates only the version it read (409 when another run changed it). None when the record is not
    this run's (a run that verified before records existed: nothing to mark).
    """
    path = plan.rollout_record_path(build_name)
    record, sha = read_record(github, plan, build_name)
    if record is None or record["run_id"] != run_id:
        return None
    if record.get("finished_at"):
        return record
    done = {**record, "finished_at": iso(utcnow())}
    github.put_file(path, _text(done),
                    f"Rollout of immutable image build {build_name} finished by run {run_id}\n\n"
                    + pc.key_line(pc.rollout_key(build_name, "finished")), sha=sha)
    return done
