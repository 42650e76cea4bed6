"""Airflow plugin: the rollout status page (FastAPI app in the api-server, an entry in the UI's nav).

The page lives at ``/rollout-status/``; the Airflow UI's nav bar gets a "Rollout status" entry opening
it, and each DAG run view a "Rollout status" tab showing that run's page.
Importing this module builds the FastAPI app only: no DB, network or Variable access.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from rollout_status import URL_PREFIX
from rollout_status.status_app import app

_HREF = URL_PREFIX.lstrip("/")


class RolloutStatusPlugin(AirflowPlugin):
    """Rollout status page of the immutable worker image rollouts."""

    name = "rollout_status"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Rollout status"}]
    external_views = [
        # A link, not an embedded view: Airflow sandboxes embedded views without allow-popups or
        # top navigation, which would leave the page's links to Jenkins, GitHub and Razee dead.
        {
            "name": "Rollout status",
            "href": f"{_HREF}/",
            "icon": f"{_HREF}/icon.svg",
            "destination": "nav",
        },
        # In context: a "Rollout status" tab on the run view (read-only there; outbound links are
        # best opened from the full page).
        {
            "name": "Rollout status",
            "href": f"{_HREF}/dags/{{DAG_ID}}/runs/{{RUN_ID}}",
            "url_route": "rollout-status-run",
            "destination": "dag_run",
        },
    ]
