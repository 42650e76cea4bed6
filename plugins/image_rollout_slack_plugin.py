"""Airflow plugin: the endpoint the Slack app sends Approve / Reject clicks to (see image_rollout.slack_actions).

Mounted by the api-server at ``/image-rollout/slack``; Slack's Interactivity Request URL is
``<api-server>/image-rollout/slack/interactions``. Importing this module builds the FastAPI app only.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from image_rollout.slack_actions import URL_PREFIX, app


class ImageRolloutSlackPlugin(AirflowPlugin):
    """Approvals from Slack for the immutable image rollout."""

    name = "image_rollout_slack"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Rollout approvals from Slack"}]
