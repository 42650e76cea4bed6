"""Approvals from Slack, below the api-server: the signature, the payload, the plan's user mapping, the refusals
that come before Airflow's HITL route, and the replay memory in the audit log (the path through the real
api-server and scheduler is tests/live/test_slack_approval.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest

from image_rollout import slack_actions as sa
from image_rollout.plan import PLANS_DIR, PlanError, load_plan
from image_rollout.slack_messages import decision_blocks, decision_value

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
NOW = 1_764_130_000.0


def sign(body: bytes, stamp: int | str, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    return {"x-slack-request-timestamp": str(stamp), "x-slack-signature": f"v0={digest}"}


def click_body(*, user="U0SREAPPR1", action_id="image_rollout_approve", dag_id="immutable_image_rollout",
               run_id="rollout__533-1251-880-20211101", try_number=1) -> bytes:
    value = decision_value(dag_id=dag_id, run_id=run_id, task_id="ap_south.approve_ap_south", map_index=-1,
                           try_number=try_number)
    payload = {
        "type": "block_actions", "user": {"id": user, "username": "someone", "team_id": "T0SANDBOX"},
        "container": {"type": "message", "message_ts": "1764130000.000100", "channel_id": "C0PATCHING1"},
        "channel": {"id": "C0PATCHING1", "name": "sre-cfs-patching"},
        "message": {"ts": "1764130000.000100", "text": "Approval needed", "blocks": decision_blocks("Approval needed", value)},
        "actions": [{"type": "button", "action_id": action_id, "block_id": "image_rollout_decision", "value": value}],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


# -- signature ---------------------------------------------------------------------------------------


def test_a_correctly_signed_fresh_request_passes():
    body = click_body()
    assert sa.signature_problem(body, sign(body, int(NOW) - 10), SECRET, now=NOW) is None


def test_a_wrong_signature_is_refused():
    body = click_body()
    assert "does not match" in sa.signature_problem(body, sign(body, int(NOW), "another-secret"), SECRET, now=NOW)
    tampered = click_body(user="U0INTRUDER")  # signed for one body, sent with another
    assert "does not match" in sa.signature_problem(tampered, sign(body, int(NOW)), SECRET, now=NOW)


@pytest.mark.parametrize("age", [301, -301, 3600])
def test_a_stale_timestamp_is_refused_even_when_signed(age):
    body = click_body()
    problem = sa.signature_problem(body, sign(body, int(NOW) - age), SECRET, now=NOW)
    assert problem and problem.startswith("stale request")


def test_a_request_without_slack_headers_is_refused():
    body = click_body()
    assert "not a request from Slack" in sa.signature_problem(body, {}, SECRET, now=NOW)
    assert "Unix time" in sa.signature_problem(body, {**sign(body, int(NOW)), "x-slack-request-timestamp": "x"},
                                               SECRET, now=NOW)


# -- payload -----------------------------------------------------------------------------------------


def test_the_click_names_the_request_and_the_option():
    click = sa.parse_click(click_body(action_id="image_rollout_reject", try_number=3))
    assert click["option"] == "Reject" and click["user"] == "U0SREAPPR1"
    assert click["channel"] == "C0PATCHING1" and click["ts"] == "1764130000.000100"
    assert click["request"] == {"dag_id": "immutable_image_rollout", "run_id": "rollout__533-1251-880-20211101",
                                "task_id": "ap_south.approve_ap_south", "map_index": -1, "try_number": 3}


@pytest.mark.parametrize("body,message", [
    (b"payload=%7Bnot-json", "not Slack's form-encoded"),
    (urlencode({"payload": json.dumps({"type": "view_submission"})}).encode(), "not a button click"),
    (click_body(action_id="something_else"), "not a click on a prod decision"),
])
def test_other_payloads_are_refused(body, message):
    with pytest.raises(sa.Refused, match=message):
        sa.parse_click(body)


# -- the plan's mapping --------------------------------------------------------------------------------


def test_the_plan_maps_slack_users_to_approvers():
    approvers = load_plan("sandbox").approvers
    assert approvers.airflow_user_for_slack("U0SREAPPR1") == "sre-approver"
    assert approvers.airflow_user_for_slack("U0JENKINS1") is None
    assert approvers.airflow_user_for_slack(None) is None


@pytest.mark.parametrize("mapping,message", [
    ({"jenkins": "U0JENKINS1"}, "'jenkins' is not one of the approvers"),
    ({"sre-approver": "sre-approver"}, "is not a Slack user id"),
    ({"sre-approver": "U1", "other": "U1"}, "is not a Slack user id"),
])
def test_a_bad_mapping_is_refused_on_load(tmp_path, mapping, message):
    data = json.loads((PLANS_DIR / "sandbox.json").read_text())
    data["approvers"]["slack_user_ids"] = mapping
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=message):
        load_plan(path)


def test_one_slack_user_cannot_be_two_approvers(tmp_path):
    data = json.loads((PLANS_DIR / "sandbox.json").read_text())
    data["approvers"] = {"users": ["sre-approver", "sre-second"],
                         "slack_user_ids": {"sre-approver": "U0SAME0001", "sre-second": "U0SAME0001"}}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="given for both sre-approver and sre-second"):
        load_plan(path)


# -- refusals before Airflow's HITL route ---------------------------------------------------------------


class FakeSession:
    """Answers the run, then the task instance, as the metadata DB would."""

    def __init__(self, *rows):
        self.rows = list(rows)

    def scalar(self, query):
        return self.rows.pop(0) if self.rows else None


REQUEST = sa.parse_click(click_body())["request"]


@pytest.fixture
def as_airflow_user(monkeypatch):
    monkeypatch.setattr(sa, "airflow_user", lambda who: SimpleNamespace(get_id=lambda: who, get_name=lambda: who))


def test_an_unmapped_slack_user_is_told_and_nothing_is_read():
    session = FakeSession()
    with pytest.raises(sa.Refused, match="U0JENKINS1.*not an approver"):
        sa.answer(session, slack_user="U0JENKINS1", option="Approve", request=REQUEST, plan=load_plan("sandbox"))


def test_the_triggering_identity_cannot_approve_from_slack(as_airflow_user):
    run = SimpleNamespace(triggering_user_name="sre-approver")
    with pytest.raises(sa.Refused, match="sre-approver triggered this run"):
        sa.answer(FakeSession(run), slack_user="U0SREAPPR1", option="Approve", request=REQUEST,
                  plan=load_plan("sandbox"))


def test_a_button_of_an_earlier_try_answers_nothing(as_airflow_user):
    run = SimpleNamespace(triggering_user_name="jenkins")
    ti = SimpleNamespace(try_number=2, state="awaiting_input")
    with pytest.raises(sa.Refused, match="asked again"):
        sa.answer(FakeSession(run, ti), slack_user="U0SREAPPR1", option="Approve", request=REQUEST,
                  plan=load_plan("sandbox"))


def test_a_click_seconds_after_the_task_parked_is_asked_again(as_airflow_user):
    """Airflow 3.3.2 fails a HITL task answered before the scheduler saw its worker exit after parking."""
    from datetime import UTC, datetime

    import airflow.api_fastapi.app  # noqa: F401 - answer() imports these; seconds on a cold process
    import airflow.api_fastapi.core_api.routes.public.hitl  # noqa: F401

    plan = load_plan("sandbox")
    run = SimpleNamespace(triggering_user_name="jenkins")
    ti = SimpleNamespace(try_number=REQUEST["try_number"], state="awaiting_input", updated_at=datetime.now(UTC))
    with pytest.raises(sa.Refused, match="click again in a few seconds"):
        sa.answer(FakeSession(run, ti), slack_user="U0SREAPPR1", option="Approve", request=REQUEST, plan=plan)


def test_another_dags_button_is_refused():
    request = {**REQUEST, "dag_id": "some_other_dag"}
    with pytest.raises(sa.Refused, match="not one of the rollout's or the backout's"):
        sa.answer(FakeSession(), slack_user="U0SREAPPR1", option="Approve", request=request,
                  plan=load_plan("sandbox"))


def test_a_backout_button_is_answered_under_the_same_rules(as_airflow_user):
    """The backout's prod approval has the buttons too: the same approver and triggering-user rules apply."""
    request = {**REQUEST, "dag_id": "immutable_image_backout", "run_id": "manual__x", "task_id": "approve_backout"}
    with pytest.raises(sa.Refused, match="U0JENKINS1.*not an approver"):
        sa.answer(FakeSession(), slack_user="U0JENKINS1", option="Approve", request=request, plan=load_plan("sandbox"))
    run = SimpleNamespace(triggering_user_name="sre-approver")
    with pytest.raises(sa.Refused, match="sre-approver triggered this run"):
        sa.answer(FakeSession(run), slack_user="U0SREAPPR1", option="Approve", request=request,
                  plan=load_plan("sandbox"))


# -- the whole request, with the metadata DB as replay memory -------------------------------------------


def test_replay_and_bad_signature_against_the_audit_log(rollout_sandbox, monkeypatch):
    from airflow.models.log import Log
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    from include.sandbox.connections import slack_signing_secret

    def audit_rows() -> int:
        with create_session() as session:
            return session.scalar(select(func.count(Log.id)).where(Log.event == sa.AUDIT_EVENT))

    before = audit_rows()
    body = click_body(user="U0NOTAPPR1", run_id=f"rollout__replay-{time.time_ns()}")
    now = time.time()
    headers = sign(body, int(now), slack_signing_secret())

    wrong = sa.handle(body, sign(body, int(now), "not-the-secret"), now=now)
    assert wrong.status == 401 and not wrong.followups and audit_rows() == before

    first = sa.handle(body, headers, now=now)
    assert first.status == 200 and first.body["ok"] is False and "not an approver" in first.body["error"]
    assert len(first.followups) == 1  # the ephemeral "you are not an approver"
    assert audit_rows() == before + 1

    again = sa.handle(body, headers, now=now + 5)
    assert again.status == 409 and "replayed" in again.body["error"] and not again.followups
    assert audit_rows() == before + 1

    monkeypatch.setenv("AIRFLOW_CONN_SLACK_API_DEFAULT", json.dumps({"conn_type": "slack", "password": "x"}))
    unset = sa.handle(body, headers, now=now)
    assert unset.status == 503 and "signing_secret" in unset.body["error"]
