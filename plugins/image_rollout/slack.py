"""Slack notifications for the rollout: best effort, never a reason to fail."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10


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
) -> bool:
    """
    Post ``text`` to ``channel`` with ``chat.postMessage``; return whether Slack accepted it.

    Never raises: a Slack outage must not fail or stall the rollout, so any failure is logged
    as a warning (without the token) and reported as False.

    :param text: message in Slack mrkdwn; escape untrusted parts with :func:`escape_mrkdwn`.
    :param channel: channel name or id, e.g. ``#conductors-patching``.
    :param slack_conn_id: Slack API connection (token in the password; extra ``base_url`` may
        point at another API root, e.g. the sandbox).
    :param timeout: seconds to wait for Slack.
    """
    from airflow.providers.slack.hooks.slack import SlackHook  # imported here: keeps DAG parsing light

    token = None
    try:
        hook = SlackHook(slack_conn_id=slack_conn_id, timeout=timeout)
        token = getattr(hook.client, "token", None)
        response = hook.client.chat_postMessage(channel=channel, text=text)
        if not response.get("ok", False):
            log.warning("Slack did not accept the message to %s: %s", channel, response.get("error"))
            return False
        return True
    except Exception as exc:
        detail = _describe(exc)
        if token:
            detail = detail.replace(token, "***")
        log.warning("Slack notification to %s failed: %s", channel, detail)
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
