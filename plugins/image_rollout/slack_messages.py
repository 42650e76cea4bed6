"""Slack notifications for the rollout: best effort, never a reason to fail."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10
#: The decision buttons: Block Kit ``action_id`` -> the HITL option the click chooses.
DECISION_ACTIONS = {"image_rollout_approve": "Approve", "image_rollout_reject": "Reject"}
DECISION_BLOCK_ID = "image_rollout_decision"


def escape_mrkdwn(text: str) -> str:
    """
    Escape ``&``, ``<`` and ``>`` as Slack requires, so values (build names, conf) cannot form links or mentions.

    :param text: text to put into a message verbatim.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def notify(
    text: str,
    *,
    channel: str,
    slack_conn_id: str = "slack_api_default",
    timeout: int = DEFAULT_TIMEOUT,
    blocks: list[dict] | None = None,
) -> bool:
    """
    Post ``text`` to ``channel`` with ``chat.postMessage``; return whether Slack accepted it.

    Never raises: a Slack outage must not fail or stall the rollout, so any failure is logged
    as a warning (without the token) and reported as False.

    :param text: message in Slack mrkdwn; escape untrusted parts with :func:`escape_mrkdwn`.
        With ``blocks`` it is the notification's fallback text.
    :param channel: channel name or id, e.g. ``#conductors-patching``.
    :param slack_conn_id: Slack API connection (token in the password; extra ``base_url`` may
        point at another API root, e.g. the sandbox).
    :param timeout: seconds to wait for Slack.
    :param blocks: Block Kit blocks (e.g. the approval request's buttons).
    """
    extra = {"blocks": blocks} if blocks else {}
    return _call("chat_postMessage", f"notification to {channel}", slack_conn_id, timeout,
                 channel=channel, text=text, **extra)


def update_message(channel_id: str, ts: str, text: str, *, blocks: list[dict] | None = None,
                   slack_conn_id: str = "slack_api_default", timeout: int = DEFAULT_TIMEOUT) -> bool:
    """Replace a message the app posted (``chat.update``: the channel's id and the message's ``ts``); never raises."""
    extra = {"blocks": blocks} if blocks is not None else {}
    return _call("chat_update", f"update of {ts} in {channel_id}", slack_conn_id, timeout,
                 channel=channel_id, ts=ts, text=text, **extra)


def post_ephemeral(channel_id: str, user_id: str, text: str, *, slack_conn_id: str = "slack_api_default",
                   timeout: int = DEFAULT_TIMEOUT) -> bool:
    """Show ``text`` to one user only (``chat.postEphemeral``), e.g. why their click changed nothing; never raises."""
    return _call("chat_postEphemeral", f"ephemeral message to {user_id} in {channel_id}", slack_conn_id, timeout,
                 channel=channel_id, user=user_id, text=text)


def _call(method: str, what: str, slack_conn_id: str, timeout: int, **kwargs) -> bool:
    """One Web API call through the slack provider's ``SlackHook``; False (logged, token redacted) on failure."""
    from airflow.providers.slack.hooks.slack import SlackHook  # imported here: keeps DAG parsing light

    token = None
    try:
        hook = SlackHook(slack_conn_id=slack_conn_id, timeout=timeout)
        token = getattr(hook.client, "token", None)
        response = getattr(hook.client, method)(**kwargs)
        if not response.get("ok", False):
            log.warning("Slack did not accept the %s: %s", what, response.get("error"))
            return False
        return True
    except Exception as exc:
        detail = _describe(exc)
        if token:
            detail = detail.replace(token, "***")
        log.warning("Slack %s failed: %s", what, detail)
        return False


def _describe(exc: Exception) -> str:
    """Summarise a Slack failure: status and error code, not the whole response (no headers)."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        try:
            error = response.get("error")
        except Exception:  # a non-JSON body (e.g. a proxy's 503 page)
            error = None
        return f"{type(exc).__name__}: HTTP {status}" + (f" ({error})" if error else "")
    text = str(exc)
    return f"{type(exc).__name__}: {text[:300]}"


# -- the prod start decision in Slack ------------------------------------------------------------------


def decision_value(*, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    """A button's ``value``: the HITL request it answers (the try too, so a button of a cleared try answers nothing)."""
    return json.dumps({"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index,
                       "try_number": try_number}, separators=(",", ":"), sort_keys=True)


def parse_decision_value(value: str | None) -> dict:
    """The HITL request a button names; ValueError naming the problem for anything else."""
    try:
        data = json.loads(value or "")
    except ValueError:
        raise ValueError("the button's value is not JSON") from None
    if not isinstance(data, Mapping):
        raise ValueError("the button's value is not an object")
    for key, kind in (("dag_id", str), ("run_id", str), ("task_id", str), ("map_index", int), ("try_number", int)):
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise ValueError(f"the button's value has no {key}")
    return dict(data)


def decision_blocks(text: str, value: str) -> list[dict]:
    """The request as Block Kit: the text, then Approve and Reject buttons, each asking for confirmation."""

    def button(action_id: str, label: str, style: str, question: str) -> dict:
        return {
            "type": "button", "action_id": action_id, "value": value, "style": style,
            "text": {"type": "plain_text", "text": label},
            "confirm": {"title": {"type": "plain_text", "text": f"{label} the prod start?"},
                        "text": {"type": "mrkdwn", "text": question},
                        "confirm": {"type": "plain_text", "text": label},
                        "deny": {"type": "plain_text", "text": "Cancel"}},
        }

    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "actions", "block_id": DECISION_BLOCK_ID, "elements": [
            button("image_rollout_approve", "Approve", "primary", "The canary starts once its preconditions hold."),
            button("image_rollout_reject", "Reject", "danger",
                   "The rollout stops before the canary changes and the change request is withdrawn."),
        ]},
    ]


def decided_blocks(blocks: list[dict] | None, text: str, outcome: str) -> list[dict]:
    """The request's blocks without the buttons, plus a line saying who decided (``outcome``, mrkdwn)."""
    kept = [b for b in blocks or [] if isinstance(b, Mapping) and b.get("type") != "actions"]
    if not kept:
        kept = [{"type": "section", "text": {"type": "mrkdwn", "text": text or "Prod start decision"}}]
    return [*kept, {"type": "context", "elements": [{"type": "mrkdwn", "text": outcome}]}]
