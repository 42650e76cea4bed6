"""The last checks: read the flag back, and say plainly when the run is not a full success.

Issue 9 item 8: a run is green only when every gate passed, every target serves the build and
adoption reached its threshold. A superseded run fails at ``rollout_end.superseded`` with a
message saying so: a distinct, labelled end, never a plain success.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from image_rollout import lazy_module
from image_rollout.contracts import END_GROUP, SUPERSEDED_TASK, adoption_task_id, gate_task_ids
from image_rollout.operators.base import RolloutOperator
from image_rollout.slack_messages import escape_mrkdwn

claim = lazy_module("image_rollout.operators.claim")

SUPERSEDED_PREFIX = "SUPERSEDED"


class VerifyFleetOperator(RolloutOperator):
    """Confirm by data that the rollout reached every target and adoption, then announce completion."""

    def execute(self, context, event: dict | None = None) -> dict:
        verified = self.skip_if_noop_rerun(context)  # no second "complete" for a finished rollout
        if not verified:
            # Red, not skipped: a run whose build never passed verification rolled nothing out. The task
            # that stopped it has escalated; this one only keeps the run from ending green.
            raise AirflowFailException("the build did not pass verification: nothing was rolled out")
        build = self.build_record(context)
        if build.get("dry_run"):
            raise AirflowSkipException("dry run: nothing was rolled out")
        newer = self.superseded_by(build["name"])
        if newer:
            raise AirflowSkipException(f"superseded by {newer}: see {SUPERSEDED_TASK}")
        rules = self.flags(context).rule_values()
        behind = [t.target for t in self.plan.targets if rules.get(t.target) != build["images"]]
        ti = context["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[context["run_id"]])
        states = states.get(context["run_id"], states)
        if behind:
            text = f"targets not serving build {build['name']}: {', '.join(behind)}"
            if not any(str(v) == "failed" for k, v in states.items() if not k.startswith(f"{END_GROUP}.")):
                # Nothing else failed (e.g. a target skipped after drift): this is the one escalation.
                self.say(f"Rollout of {escape_mrkdwn(build['name'])} is not complete: {escape_mrkdwn(text)}",
                         escalate=True)
            raise AirflowFailException(text)
        not_passed = [g for g in gate_task_ids(self.plan) if str(states.get(g)) != "success"]
        if not_passed:
            raise AirflowFailException(f"gates that did not pass: {', '.join(not_passed)}")
        adoption_task = adoption_task_id(self.plan)
        adoption = (ti.xcom_pull(task_ids=adoption_task) if adoption_task else None) or {}
        threshold = self.plan.adoption.threshold_percent
        if adoption.get("percent") is None or float(adoption["percent"]) < threshold:
            raise AirflowFailException(
                f"adoption {adoption.get('percent')}% has not reached the plan's {threshold}%")
        # The build's rollout record says it finished (GitHub), so a later run of it is a no-op rerun.
        self.hold_if_held(context, build["name"])
        self.stop_if_taken_over(context, build["name"])
        claim.mark_finished(self.github(context), self.plan, build["name"], context["run_id"])
        self.say(
            f":white_check_mark: Rollout of immutable image build {build['name']} complete: all "
            f"{len(self.plan.targets)} targets serve it, every gate passed; {adoption.get('percent')}% of prod "
            "workers run it"
        )
        return {"build": build["name"], "targets": len(self.plan.targets), "adoption_percent": adoption.get("percent")}


class SupersededCheckOperator(RolloutOperator):
    """Fail, with a clear label, when a newer build took the flag from this run."""

    def execute(self, context) -> dict:
        verified = self.skip_if_noop_rerun(context)
        if not verified:
            raise AirflowSkipException("no verified build")
        newer = self.superseded_by(verified["name"])
        if not newer:
            return {"superseded_by": None}
        text = (f"{SUPERSEDED_PREFIX}: rollout of {verified['name']} was superseded by newer build {newer}; "
                "it is not a success. See the rollback, if any, for the targets it restored or left alone")
        self.say(escape_mrkdwn(text), escalate=True)
        raise AirflowFailException(text)
