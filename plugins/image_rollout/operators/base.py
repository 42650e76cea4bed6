"""What every rollout task shares: the plan, the verified build, and the guards before a flag write.

The guards are the safety rules of DESIGN.md section 5 that apply to any write: the freeze
switch holds the write (deferred, no worker slot), and a rollout superseded by a newer
build stops without touching the flag again.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import BaseOperator, Variable
from airflow.sdk.exceptions import AirflowSkipException

from image_rollout import gates
from image_rollout.plan import RolloutPlan, load_plan
from image_rollout.slack import escape_mrkdwn, notify

log = logging.getLogger(__name__)

VERIFY_TASK = "build_verification.verify_build"
ACTIVE_BUILD_VARIABLE = "image_rollout_active_build"
FLAG_POOL = "worker_image_flag"


# Hooks are imported when a task runs, not when the DAG is parsed: they bring requests, tenacity
# and the http provider, which would make every parse several times slower.
def flags_hook():
    from image_rollout.hooks.flags import FlagsHook

    return FlagsHook()


def jenkins_hook():
    from image_rollout.hooks.jenkins import JenkinsHook

    return JenkinsHook()


def github_hook():
    from image_rollout.hooks.github import GitHubEvidenceHook

    return GitHubEvidenceHook()


def chlorine_hook():
    from image_rollout.hooks.chlorine import ChlorineHook

    return ChlorineHook()


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class RolloutOperator(BaseOperator):
    """Base for the rollout's tasks.

    :param plan: plan name or path; default ``$ROLLOUT_PLAN`` or ``default``.
    """

    ui_color = "#e8f0fe"

    def __init__(self, *, plan: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan_name = plan

    @cached_property
    def plan(self) -> RolloutPlan:
        return load_plan(self.plan_name)

    # -- data from earlier tasks ----------------------------------------------------------------
    def build(self, context) -> dict:
        """The verified build (name, images, console): fail closed if it is missing.

        Pulled once per task run: it carries the console log, and every step asks for it.
        """
        cached = getattr(self, "_build", None)
        if cached is not None and cached[0] == context["run_id"]:
            return cached[1]
        build = context["ti"].xcom_pull(task_ids=VERIFY_TASK)
        if not build or not build.get("images"):
            raise RuntimeError(f"no verified build in XCom of {VERIFY_TASK}; it must run first")
        self._build = (context["run_id"], build)
        return build

    @staticmethod
    def pull(context, task_id: str, map_index: int | None = None) -> Any:
        if map_index is None:
            return context["ti"].xcom_pull(task_ids=task_id)
        return context["ti"].xcom_pull(task_ids=task_id, map_indexes=map_index)

    def say(self, text: str, *, escalate: bool = False) -> None:
        """Post to Slack (progress channel, or the patching channel to escalate); never raises."""
        channel = self.plan.slack.patching_channel if escalate else self.plan.slack.progress_channel
        notify(text, channel=channel)

    # -- guards before any write --------------------------------------------------------------
    def frozen(self) -> str | None:
        value = Variable.get(self.plan.freeze.variable, default=None)
        if value in (None, "", "0", "false", "False", "off"):
            return None
        return str(value)

    def hold_if_frozen(self, context) -> None:
        """Stop-the-line: while the freeze Variable is set, defer and look again later."""
        reason = self.frozen()
        if reason is None:
            return
        self.log.warning("Freeze is set (%s=%r): holding %s", self.plan.freeze.variable, reason, self.task_id)
        ti = context["ti"]
        if not ti.xcom_pull(task_ids=self.task_id, key="freeze_announced", map_indexes=ti.map_index):
            self.say(f"Rollout held by freeze ({escape_mrkdwn(reason)}): {escape_mrkdwn(self.task_id)} waits")
            ti.xcom_push(key="freeze_announced", value=True)
        self.defer(
            trigger=TimeDeltaTrigger(timedelta(seconds=self.plan.freeze.poll)),
            method_name="execute",
        )

    def superseded_by(self, build_name: str) -> str | None:
        """The newer build that owns the flag now, if any."""
        active = Variable.get(ACTIVE_BUILD_VARIABLE, default=None)
        if active and active != build_name and gates.is_newer(active, build_name):
            return active
        return None

    def stop_if_superseded(self, context, build_name: str) -> None:
        newer = self.superseded_by(build_name)
        if newer is None:
            return
        self.say(
            f"Rollout of {build_name} stopped: superseded by newer build {newer}. "
            "It does not touch the worker-image flag again.",
            escalate=True,
        )
        context["ti"].xcom_push(key="superseded_by", value=newer)
        self._record_supersession(context, build_name, newer)
        raise AirflowSkipException(f"superseded by newer build {newer}: not touching the flag")

    def _record_supersession(self, context, build_name: str, newer: str) -> None:
        """Say so in the evidence file, if this rollout has one yet (once)."""
        from image_rollout.evidence import Record
        from image_rollout.operators.evidence import append_record, evidence_for

        github = github_hook()
        path = self.plan.evidence_path(build_name)
        if github.get_file(path) is None:
            return
        build = self.build(context)
        append_record(
            github, path,
            Record("Superseded", (f"Rollout stopped at {iso(utcnow())}: superseded by newer build {newer}; "
                                  "the worker-image flag was not touched again",)),
            f"Record that immutable image build {build_name} was superseded by {newer}",
            evidence_for(self.plan, context, build, ("dev", "prestage", "stage")),
        )

    def guard_write(self, context, build_name: str) -> None:
        self.hold_if_frozen(context)
        self.stop_if_superseded(context, build_name)

    def read_rule(self, context, target: str) -> tuple[dict, Any, dict | None]:
        """Guards, then the map the target's rule serves now: every write reads first, so a rerun
        never writes twice and the map it replaces is recorded."""
        build = self.build(context)
        self.guard_write(context, build["name"])
        flags = flags_hook()
        return build, flags, flags.rule_value(target)
