"""Approvals from Slack: the endpoint Slack sends the Approve and Reject clicks of the prod start decision
(and of a backout's prod approval) to.

Mounted in the api-server by the ``image_rollout_slack`` plugin at ``/image-rollout/slack``; the Slack
app's Interactivity "Request URL" is ``<api-server>/image-rollout/slack/interactions``. A click is
acted on only when

* Slack signed it: ``v0`` HMAC-SHA256 of ``v0:{timestamp}:{body}`` with the app's signing secret (extra
  ``signing_secret`` of the Slack connection ``slack_api_default``), timestamp within 5 minutes;
* it is new: every verified request is written to Airflow's audit log (event
  ``image_rollout.slack_click``, with its signature) in the metadata DB that all api-server workers and
  replicas share, and a signature seen there in the last 6 minutes is refused as a replay (an older
  one is refused as stale anyway, so 6 minutes of memory is enough);
* the Slack user is mapped to an approver by the rollout plan (``approvers.slack_user_ids``);
* Airflow's own HITL route (``update_hitl_detail``, called as a function, not copied) accepts that
  user: assigned approver, a request still unanswered, TI-then-HITL row locks, and the event-driven
  resume of the waiting task. An Approve from the identity that triggered the run is refused, as
  ``preconditions.check_start_decision`` refuses it before the write.

A refused click changes nothing and is answered to the clicker alone (``chat.postEphemeral``); a
decision replaces the buttons with who decided (``chat.update``). Importing this module builds the app
only: no DB, network or Variable access.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from image_rollout.slack_messages import (
    DECISION_ACTIONS,
    decided_blocks,
    escape_mrkdwn,
    parse_decision_value,
    post_ephemeral,
    update_message,
)

URL_PREFIX = "/image-rollout/slack"
SLACK_CONN_ID = "slack_api_default"
#: Slack's own rule: refuse a request whose timestamp is more than 5 minutes away from now.
MAX_AGE_SECONDS = 300
#: The audit log event of a verified click; its rows are also the replay memory.
AUDIT_EVENT = "image_rollout.slack_click"
#: Seen signatures are looked up this far back: longer than MAX_AGE_SECONDS plus clock skew.
REPLAY_WINDOW = timedelta(seconds=MAX_AGE_SECONDS + 60)
#: A click this soon after the task parked is refused (ask again): see ``answer``.
PARKED_SETTLE_SECONDS = 5.0

log = logging.getLogger(__name__)
app = FastAPI(title="Rollout approvals from Slack", description=__doc__.splitlines()[0], docs_url=None,
              redoc_url=None)


class Refused(Exception):
    """A verified click that changes nothing; the message is shown to the clicker."""


@dataclass
class Outcome:
    status: int
    body: dict
    followups: list[Callable[[], object]] = field(default_factory=list)


# -- signature -----------------------------------------------------------------------------------------


def signature_problem(body: bytes, headers: Mapping[str, str], secret: str, *, now: float | None = None) -> str | None:
    """Why this request is not one Slack signed in the last 5 minutes, or None when it is.

    ``headers`` with lower-case names. The HMAC comparison is slack_sdk's ``SignatureVerifier``.
    """
    from slack_sdk.signature import SignatureVerifier

    stamp = headers.get("x-slack-request-timestamp") or ""
    signature = headers.get("x-slack-signature") or ""
    if not stamp or not signature:
        return "no X-Slack-Request-Timestamp / X-Slack-Signature: not a request from Slack"
    if not stamp.isdigit():
        return "X-Slack-Request-Timestamp is not a Unix time"
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > MAX_AGE_SECONDS:
        return f"stale request: timestamp {stamp} is more than {MAX_AGE_SECONDS}s from now"

    class _Clock:
        def now(self) -> float:
            return current

    if not SignatureVerifier(secret, clock=_Clock()).is_valid(body, stamp, signature):
        return "the signature does not match the signing secret"
    return None


def signing_secret(conn_id: str = SLACK_CONN_ID) -> str | None:
    """The Slack app's signing secret: extra ``signing_secret`` of the Slack connection (None when unset)."""
    from airflow.models.connection import Connection

    try:
        conn = Connection.get_connection_from_secrets(conn_id)
    except Exception as exc:  # an unknown connection: no secret, so every click is refused
        log.warning("No Slack connection %s to read the signing secret from: %s", conn_id, type(exc).__name__)
        return None
    secret = (conn.extra_dejson or {}).get("signing_secret")
    return str(secret) if secret else None


# -- the payload ---------------------------------------------------------------------------------------


def parse_click(body: bytes) -> dict:
    """The one button click in Slack's form-encoded ``payload=`` (``block_actions``); Refused for anything else."""
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError, IndexError):
        raise Refused("the request is not Slack's form-encoded interaction payload") from None
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        raise Refused(f"not a button click (payload type {payload.get('type') if isinstance(payload, dict) else '?'})")
    actions = payload.get("actions") or []
    if len(actions) != 1 or actions[0].get("action_id") not in DECISION_ACTIONS:
        raise Refused("not a click on a prod decision's Approve or Reject button")
    action = actions[0]
    try:
        request = parse_decision_value(action.get("value"))
    except ValueError as exc:
        raise Refused(str(exc)) from None
    user = (payload.get("user") or {}).get("id")
    channel = (payload.get("channel") or {}).get("id") or (payload.get("container") or {}).get("channel_id")
    message = payload.get("message") or {}
    ts = (payload.get("container") or {}).get("message_ts") or message.get("ts")
    if not user or not channel or not ts:
        raise Refused("the payload names no user, channel or message")
    return {"user": str(user), "channel": str(channel), "ts": str(ts), "option": DECISION_ACTIONS[action["action_id"]],
            "request": request, "message": message}


# -- Airflow: the user, the HITL answer ----------------------------------------------------------------


def airflow_user(user_id: str):
    """The auth manager's user ``user_id`` (what a login of that user would give), or None if there is none."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import (
        SimpleAuthManager,
        SimpleAuthManagerUser,
    )
    from airflow.configuration import conf

    manager = get_auth_manager()
    if isinstance(manager, SimpleAuthManager):
        if conf.getboolean("core", "simple_auth_manager_all_admins", fallback=False):
            return SimpleAuthManagerUser(username=user_id, role="admin")
        return next((u for u in manager.get_users() if u.username == user_id), None)
    try:
        return manager.deserialize_user({"sub": user_id})
    except Exception:
        return None


def answer(session, *, slack_user: str, option: str, request: dict, plan) -> dict:
    """Answer the HITL request with ``option`` as the approver ``slack_user`` maps to; Refused when it may not.

    The write is Airflow's own ``update_hitl_detail`` (the PATCH .../hitlDetails route's function).
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.state import TaskInstanceState
    from fastapi import HTTPException
    from sqlalchemy import select

    from image_rollout.contracts import BACKOUT_DAG_ID, ROLLOUT_DAG_ID

    dag_id, run_id, task_id = request["dag_id"], request["run_id"], request["task_id"]
    if dag_id not in (ROLLOUT_DAG_ID, BACKOUT_DAG_ID):
        raise Refused(f"the button is not one of the rollout's or the backout's ({dag_id})")
    who = plan.approvers.airflow_user_for_slack(slack_user)
    if who is None:
        raise Refused(f"you (Slack user {slack_user}) are not an approver of prod decisions: the rollout plan "
                      f"maps no approver to you (approvers.slack_user_ids)")
    user = airflow_user(who)
    if user is None:
        raise Refused(f"the plan maps you to {who}, who is not an Airflow user")
    run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if run is None:
        raise Refused(f"there is no run {run_id}")
    if option == "Approve" and run.triggering_user_name and run.triggering_user_name == who:
        raise Refused(f"{who} triggered this run and may not approve its prod change")
    ti = session.scalar(select(TaskInstance).where(
        TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id,
        TaskInstance.map_index == request["map_index"]))
    if ti is None:
        raise Refused(f"there is no task {task_id} in run {run_id}")
    if ti.try_number != request["try_number"]:
        raise Refused(f"this request was asked again (try {ti.try_number}): answer the newest message")
    if ti.state not in (TaskInstanceState.AWAITING_INPUT, TaskInstanceState.DEFERRED):
        raise Refused(f"{task_id} is not waiting for a decision any more (it is {ti.state})")
    if ti.updated_at and (datetime.now(UTC) - ti.updated_at).total_seconds() < PARKED_SETTLE_SECONDS:
        # Airflow 3.3.2 fails a task answered before the scheduler has seen its worker exit after parking
        # ("finished with state success, but the task instance's state attribute is queued").
        raise Refused("the request was asked a moment ago and is still being set up: click again in a few seconds")
    if not get_auth_manager().is_authorized_dag(method="PUT", access_entity=DagAccessEntity.HITL_DETAIL,
                                                details=DagDetails(id=dag_id), user=user):
        raise Refused(f"{who} may not answer requests of {dag_id} in Airflow")
    try:
        detail = update_hitl_detail(
            dag_id=dag_id, dag_run_id=run_id, task_id=task_id, map_index=request["map_index"],
            update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=[option]), user=user,
            session=session,
        )
    except HTTPException as exc:
        reasons = {403: f"{who} is not an assigned approver of this request",
                   404: "the request is not waiting for an answer (not asked yet, or cleared)",
                   409: "the request has already been answered"}
        raise Refused(reasons.get(exc.status_code, str(exc.detail))) from None
    return {"airflow_user": who, "responded_at": detail.responded_at.isoformat(),
            "chosen_options": list(detail.chosen_options)}


# -- replay memory: the audit log -----------------------------------------------------------------------


def seen_before(session, signature: str) -> bool:
    """Whether a verified request with this signature was received within the replay window."""
    from airflow._shared.timezones import timezone
    from airflow.models.log import Log
    from sqlalchemy import select

    query = select(Log.id).where(
        Log.event == AUDIT_EVENT, Log.dttm >= timezone.utcnow() - REPLAY_WINDOW,
        Log.extra.contains(json.dumps({"signature": signature})[1:-1], autoescape=True),
    ).limit(1)
    return session.scalar(query) is not None


def handle(body: bytes, headers: Mapping[str, str], *, now: float | None = None) -> Outcome:
    """Verify, deduplicate and act on one interaction request (blocking: DB and plan)."""
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    from image_rollout.plan import load_plan

    secret = signing_secret()
    if not secret:
        return Outcome(503, {"ok": False, "error": f"no Slack signing secret: set the extra signing_secret of "
                                                   f"connection {SLACK_CONN_ID}"})
    problem = signature_problem(body, headers, secret, now=now)
    if problem:
        log.warning("Refused a Slack interaction: %s", problem)
        return Outcome(401, {"ok": False, "error": problem})
    signature = headers["x-slack-signature"]
    with create_session() as session:
        if seen_before(session, signature):
            log.warning("Refused a replayed Slack interaction (signature seen before)")
            return Outcome(409, {"ok": False, "error": "replayed request: this signature was received before"})
        record = {"signature": signature, "timestamp": headers["x-slack-request-timestamp"]}
        entry = Log(event=AUDIT_EVENT, extra=json.dumps(record))
        session.add(entry)
        session.flush()  # the replay memory holds from here, whatever the click turns out to be
        try:
            click = parse_click(body)
        except Refused as exc:
            entry.extra = json.dumps({**record, "refused": str(exc)})
            return Outcome(400, {"ok": False, "error": str(exc)})
        request = click["request"]
        entry.dag_id, entry.run_id, entry.task_id = request["dag_id"], request["run_id"], request["task_id"]
        entry.map_index, entry.try_number = request["map_index"], request["try_number"]
        record.update(slack_user=click["user"], option=click["option"])
        try:
            decided = answer(session, slack_user=click["user"], option=click["option"], request=request,
                             plan=load_plan())
        except Refused as exc:
            entry.extra = json.dumps({**record, "refused": str(exc)})
            log.warning("Slack user %s's %s changed nothing: %s", click["user"], click["option"], exc)
            text = f"Your {click['option']} changed nothing: {escape_mrkdwn(str(exc))}."
            return Outcome(200, {"ok": False, "error": str(exc)},
                           [lambda: post_ephemeral(click["channel"], click["user"], text)])
        entry.owner = entry.owner_display_name = decided["airflow_user"]
        entry.extra = json.dumps({**record, "decided": click["option"]})
    log.info("Prod start decision %s from Slack by %s (Slack user %s) for %s", click["option"],
             decided["airflow_user"], click["user"], request["run_id"])
    verb = {"Approve": ":white_check_mark: Approved", "Reject": ":no_entry: Rejected"}[click["option"]]
    outcome = (f"{verb} from Slack by *{escape_mrkdwn(decided['airflow_user'])}* (<@{click['user']}>) "
               f"at {decided['responded_at'][:19].replace('T', ' ')} UTC")
    message = click["message"]
    original = message.get("text") or ""
    followup = lambda: update_message(  # noqa: E731 - one call, after the answer to Slack
        click["channel"], click["ts"], f"{original}\n{outcome}",
        blocks=decided_blocks(message.get("blocks"), original, outcome))
    return Outcome(200, {"ok": True, "decided": click["option"], "by": decided["airflow_user"]}, [followup])


@app.post("/interactions")
async def interactions(request: Request, background: BackgroundTasks) -> JSONResponse:
    """Slack's interaction payload (form post ``payload=<json>``): the Approve / Reject buttons."""
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    outcome = await run_in_threadpool(handle, body, headers)
    for followup in outcome.followups:  # after the answer: Slack wants one within 3 seconds
        background.add_task(followup)
    return JSONResponse(outcome.body, status_code=outcome.status)
