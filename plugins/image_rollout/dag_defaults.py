"""What the rollout and the backout DAG share: every task's defaults and the dry-run stop.

A module of its own so that parsing the backout DAG does not import the rollout's wiring and,
through it, every rollout operator (about 1.3 ms of each backout parse).
"""

from __future__ import annotations

from datetime import timedelta

from image_rollout.plan import PLAN_DEFAULT_ARG, RolloutPlan
from image_rollout.slack_notifiers import RolloutFailureNotifier


def task_defaults(plan: RolloutPlan, *, what: str = "rollout") -> dict:
    """Every task's retries, backoff and failure escalation, for the rollout and the backout DAG, and the
    plan the tasks load again when they run."""
    return {
        PLAN_DEFAULT_ARG: plan.source,
        "owner": "sre-cfs-patching",
        "retries": 3,
        "retry_delay": timedelta(seconds=plan.retry_delay),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
        "on_failure_callback": RolloutFailureNotifier(
            channel=plan.slack.patching_channel, airflow_url=plan.airflow_base_url, what=what
        ),
    }


def _proceed(**context) -> bool:
    """A dry run stops after the plan is shown (the name shows in the UI as the task's callable)."""
    return not bool(context["params"].get("dry_run"))
