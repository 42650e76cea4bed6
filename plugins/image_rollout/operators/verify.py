"""The last check: read the flag back and confirm every target of the plan serves the new build."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from image_rollout.operators.base import VERIFY_TASK, RolloutOperator, flags_hook


class VerifyFleetOperator(RolloutOperator):
    """Confirm by data that the rollout reached every target, then announce completion."""

    def execute(self, context) -> dict:
        if not context["ti"].xcom_pull(task_ids=VERIFY_TASK):
            raise AirflowSkipException("no verified build: nothing was rolled out")
        build = self.build(context)
        newer = self.superseded_by(build["name"])
        if newer:
            raise AirflowSkipException(f"superseded by {newer}: this rollout no longer owns the flag")
        rules = flags_hook().rule_values()
        behind = [t.target for t in self.plan.targets if rules.get(t.target) != build["images"]]
        if behind:
            raise AirflowFailException(f"targets not serving build {build['name']}: {', '.join(behind)}")
        adoption = context["ti"].xcom_pull(task_ids="rollout_monitoring.monitor_adoption") or {}
        self.say(
            f":white_check_mark: Rollout of immutable image build {build['name']} complete: all "
            f"{len(self.plan.targets)} targets serve it"
            + (f"; {adoption.get('percent')}% of prod workers run it" if adoption else "")
        )
        return {"build": build["name"], "targets": len(self.plan.targets), "adoption_percent": adoption.get("percent")}
