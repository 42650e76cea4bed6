"""Slack notifiers for callbacks and the approval request, posting through the slack provider's hook.

Built on ``airflow.sdk.BaseNotifier`` rather than the provider's ``SlackNotifier`` for two reasons: a
Slack outage never fails the rollout (README, "What happens when something fails": "Slack is down ...
notifications are best effort"; the stock notifier re-raises), and text that
comes from outside (exception messages, build names) is escaped for Slack's mrkdwn. Posting goes
through :func:`image_rollout.slack_messages.notify`, which uses the provider's ``SlackHook`` and imports it
only when a message is sent, so parsing the DAG stays light.
"""

from __future__ import annotations

from airflow.sdk import BaseNotifier

from image_rollout.slack_messages import decision_blocks, decision_value, escape_mrkdwn, notify


class SafeSlackNotifier(BaseNotifier):
    """Post ``text`` (templated) to ``channel``; never raises.

    :param text: the message, a Jinja template rendered with the task's context.
    :param channel: Slack channel (from the plan: not templated).
    :param slack_conn_id: the Slack API connection.
    """

    template_fields = ("text",)

    def __init__(self, *, text: str, channel: str, slack_conn_id: str = "slack_api_default") -> None:
        super().__init__()
        self.text = text
        self.channel = channel
        self.slack_conn_id = slack_conn_id

    def notify(self, context) -> None:
        notify(self.text, channel=self.channel, slack_conn_id=self.slack_conn_id)


class RolloutFailureNotifier(SafeSlackNotifier):
    """Escalate a failed task to the patching channel: what failed, where, and where to look.

    Its text is written when the task fails, from the context: nothing is templated."""

    template_fields = ()

    def __init__(self, *, channel: str, airflow_url: str, what: str = "rollout", **kwargs) -> None:
        super().__init__(channel=channel, text="", **kwargs)
        self.airflow_url = airflow_url.rstrip("/")
        self.what = what

    def notify(self, context) -> None:
        ti = context["ti"]
        error = context.get("exception")
        build_name = (context.get("params") or {}).get("build_name", "?")
        link = f"{self.airflow_url}/dags/{ti.dag_id}/runs/{context['run_id']}/tasks/{ti.task_id}"
        self.text = (
            f":red_circle: Immutable image {self.what} of {escape_mrkdwn(build_name)} failed at "
            f"`{escape_mrkdwn(ti.task_id)}` (try {ti.try_number}): "
            f"{escape_mrkdwn(str(error)[:300]) if error else 'see the log'}. Log: {link}"
        )
        super().notify(context)


class DecisionRequestNotifier(SafeSlackNotifier):
    """Announce a HITL request with Approve and Reject buttons that answer it from Slack.

    The buttons carry the task instance the request belongs to (dag, run, task, map index, try); Slack
    sends the click to the ``image_rollout_slack`` plugin, which answers the request for the approver the
    plan maps the Slack user to (see README, "Approvals from Slack").
    """

    def notify(self, context) -> None:
        ti = context["ti"]
        value = decision_value(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id,
                               map_index=ti.map_index if ti.map_index is not None else -1,
                               try_number=ti.try_number)
        notify(self.text, channel=self.channel, slack_conn_id=self.slack_conn_id,
               blocks=decision_blocks(self.text, value))
