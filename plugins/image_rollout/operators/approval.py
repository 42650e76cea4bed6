"""The prod change approval: the one place the runbook needs a person.

The provider's ``ApprovalOperator`` (never with a default of Approve), plus what a rejection
means here: the change request is declined in Razee too, and the patching channel hears why
the rollout stopped before the canary changed.
"""

from __future__ import annotations

import logging

from airflow.providers.standard.operators.hitl import ApprovalOperator

from image_rollout.slack import escape_mrkdwn, notify

log = logging.getLogger(__name__)


class ProdChangeApprovalOperator(ApprovalOperator):
    """Approve or reject the prod train filed by ``file_task_id``.

    :param file_task_id: the task that filed the change request.
    :param target: the canary target.
    :param patching_channel: where a rejection is announced.
    """

    def __init__(self, *, file_task_id: str, target: str, patching_channel: str, **kwargs) -> None:
        if kwargs.get("defaults"):
            raise ValueError("the prod approval must not have a default answer")
        super().__init__(**kwargs)
        self.file_task_id = file_task_id
        self.target = target
        self.patching_channel = patching_channel

    def execute(self, context):
        filed = context["ti"].xcom_pull(task_ids=self.file_task_id) or {}
        if filed.get("already_serving"):
            # A rerun after the promotion went through: it was approved then; don't ask again.
            self.log.info("%s already serves this build: no approval to ask for", self.target)
            return {"chosen_options": [], "already_serving": True, "responded_by_user": None}
        return super().execute(context)

    def execute_complete(self, context, event: dict):
        if (event.get("chosen_options") or [None])[0] == self.REJECT:
            self._rejected(context, event)
        return super().execute_complete(context=context, event=event)

    def _rejected(self, context, event: dict) -> None:
        from image_rollout.hooks.flags import FlagsHook

        user = event.get("responded_by_user") or {}
        who = user.get("name") or user.get("id") or "unknown"
        filed = context["ti"].xcom_pull(task_ids=self.file_task_id) or {}
        request_id = filed.get("request_id")
        try:
            if request_id and FlagsHook().get_change_request(request_id).get("reviewStatus") == "pending":
                FlagsHook().review_change_request(request_id, "decline", f"Rejected in Airflow by {who}")
        except Exception as exc:  # the rollout stops either way; say so rather than fail the answer
            log.warning("Could not decline change request %s: %s", request_id, exc)
        notify(
            f"Prod change for {self.target} rejected in Airflow by {escape_mrkdwn(who)}: rollout of "
            f"{escape_mrkdwn(context['params'].get('build_name', '?'))} stopped before {self.target} changed",
            channel=self.patching_channel,
        )
