"""Slack notifiers built on the slack provider's ``SlackNotifier``.

Two differences from the stock notifier, both from DESIGN.md: a Slack outage never fails the
rollout (the stock notifier re-raises), and text that comes from outside (exception
messages, build names) is escaped for Slack's mrkdwn.
"""

from __future__ import annotations

import logging

from airflow.providers.slack.notifications.slack import SlackNotifier

from image_rollout.slack import escape_mrkdwn

log = logging.getLogger(__name__)


class SafeSlackNotifier(SlackNotifier):
    """``SlackNotifier`` that logs instead of raising when Slack is down."""

    def notify(self, context) -> None:
        try:
            super().notify(context)
        except Exception as exc:  # a notification must never fail the task it reports on
            log.warning("Slack notification to %s failed: %s", self.channel, type(exc).__name__)

    def __call__(self, *args) -> None:
        try:
            super().__call__(*args)
        except Exception as exc:
            log.warning("Slack notification to %s failed: %s", self.channel, type(exc).__name__)


class RolloutFailureNotifier(SafeSlackNotifier):
    """Escalate a failed task to the patching channel: what failed, where, and where to look."""

    def __init__(self, *, channel: str, airflow_url: str, **kwargs) -> None:
        super().__init__(channel=channel, text="", **kwargs)
        self.airflow_url = airflow_url.rstrip("/")

    def notify(self, context) -> None:
        ti = context["ti"]
        error = context.get("exception")
        build = (context.get("params") or {}).get("build_name", "?")
        link = f"{self.airflow_url}/dags/{ti.dag_id}/runs/{context['run_id']}/tasks/{ti.task_id}"
        self.text = (
            f":red_circle: Immutable image rollout of {escape_mrkdwn(build)} failed at "
            f"`{escape_mrkdwn(ti.task_id)}` (try {ti.try_number}): "
            f"{escape_mrkdwn(str(error)[:300]) if error else 'see the log'}. Log: {link}"
        )
        super().notify(context)
