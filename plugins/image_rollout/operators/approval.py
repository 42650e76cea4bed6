"""The prod start decision: the one place the runbook needs a person.

Runbook: "wait for the train to be approved, then start the deployment". The change board
approves the prod train in LaunchDarkly (the rollout never reviews its own request); only after
that does this task ask the SRE's go in Airflow. The request is assigned to the plan's approvers,
has no default answer, and the identity that triggered the run cannot take it (the HITL API
refuses an unassigned user; the apply task refuses it again). *Reject* deletes a still-pending
request (LaunchDarkly ``DELETE``) or leaves the approved one unapplied.

The request's Slack message carries Approve and Reject buttons (``notifications.DecisionRequestNotifier``);
a click is answered by ``image_rollout.slack_actions`` through the same HITL route as the UI, as the
approver the plan maps the Slack user to, so this operator sees the same answer either way.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.providers.standard.exceptions import HITLTriggerEventError
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk.exceptions import AirflowFailException

from image_rollout import lazy_module
from image_rollout.contracts import approver_name, iso, utcnow
from image_rollout.slack_messages import escape_mrkdwn, notify

pc = lazy_module("image_rollout.preconditions")
triggers = lazy_module("image_rollout.triggers")

log = logging.getLogger(__name__)


class ProdChangeApprovalOperator(ApprovalOperator):
    """The SRE's go for the prod train filed by ``file_task_id``, once the change board approved it.

    :param file_task_id: the task that filed the change request.
    :param target: the canary target.
    :param patching_channel: where a rejection is announced.
    :param approvers: Airflow user ids the decision is assigned to (the plan's approvers).
    :param board_poll: how often to look at the change request while the board decides.
    :param board_timeout: how long the board may take.
    :param evidence_path: the evidence file (a rerun that recorded its own decision is not asked again).
    """

    template_fields = (*ApprovalOperator.template_fields, "evidence_path")

    def __init__(self, *, file_task_id: str, target: str, patching_channel: str, approvers: list[str] | tuple,
                 board_poll: float = 60.0, board_timeout: float = 86400.0, evidence_path: str | None = None,
                 **kwargs) -> None:
        if kwargs.get("defaults"):
            raise ValueError("the prod approval must not have a default answer")
        if not approvers:
            raise ValueError("the prod approval needs assigned approvers")
        kwargs["assigned_users"] = [{"id": u, "name": u} for u in approvers]
        super().__init__(**kwargs)
        self.file_task_id = file_task_id
        self.target = target
        self.patching_channel = patching_channel
        self.approvers = list(approvers)
        self.board_poll = board_poll
        self.board_timeout = board_timeout
        self.evidence_path = evidence_path

    def execute(self, context, event: dict | None = None):
        filed = context["ti"].xcom_pull(task_ids=self.file_task_id) or {}
        build_name = context["params"].get("build_name", "?")
        if filed.get("already_serving"):
            recorded = self._recorded_decision(build_name)
            if recorded:
                # A rerun of this run after its own approved promotion: the decision is in the evidence.
                self.log.info("%s serves this build from our own request and the decision is recorded", self.target)
                return {"chosen_options": [], "already_serving": True, "responded_by_user": None,
                        "recorded_in": recorded}
        requests = self.filed_requests(context)
        if not requests:
            raise AirflowFailException(f"no change request filed for {self.label(context)}: nothing to decide on")
        from image_rollout.hooks.flags import FlagsHook

        if (event or {}).get("verdict") == "deadline":
            raise AirflowFailException(f"the change board did not decide in time ({event.get('reason')})")
        if (event or {}).get("verdict") == "error":
            raise RuntimeError(f"cannot read change request: {event.get('reason')}")
        decided = (event or {}).get("request") if (event or {}).get("verdict") in ("approved", "declined") else None
        hook = None
        seen = []
        for item in requests:
            request_id, target = item["request_id"], item.get("target", self.target)
            if isinstance(decided, dict) and decided.get("_id") == request_id:
                request = decided
            else:
                hook = hook or FlagsHook()
                request = hook.get_change_request(request_id, missing_ok=True)
            if request is None:  # withdrawn when a start was rejected, or deleted by hand: never retried
                raise AirflowFailException(pc.train_withdrawn(request_id, target, self.file_task_id))
            if request.get("reviewStatus") == "declined":
                notify(f"The change board declined the prod train {escape_mrkdwn(str(request_id))} for {target}: "
                       f"{escape_mrkdwn(self.stopped(context))} stopped before {target} changed",
                       channel=self.patching_channel)
                raise AirflowFailException(f"change request {request_id} for {target} was declined by the board")
            if request.get("reviewStatus") != "approved" and request.get("status") != "completed":
                self.log.info("Waiting for the change board to approve %s before asking for the start", request_id)
                self.defer(
                    trigger=triggers.ChangeRequestTrigger(poll=self.board_poll, deadline=_iso_in(self.board_timeout),
                                                 request_id=request_id),
                    method_name="execute",
                )
            seen.append(request)
        context["ti"].xcom_push(key="board", value={
            "request_id": seen[0]["_id"], "request_ids": [r["_id"] for r in seen],
            "review_status": seen[0].get("reviewStatus") if len(seen) == 1 else (
                "approved" if all(r.get("reviewStatus") == "approved" for r in seen) else "mixed"),
            "reviewers": sorted({str(r.get("memberId")) for request in seen for r in request.get("allReviews") or []
                                 if r.get("kind") == "approve" and r.get("memberId")}),
        })
        return super().execute(context)

    def execute_complete(self, context, event: dict):
        # A decision ends the task for good (AirflowFailException is never retried); the task's retries
        # are for the machinery only: Airflow 3.3.2's scheduler can fail a task that resumes from a wait
        # before it processed the worker's exit ("finished with state success, but the task instance's
        # state attribute is running"). A retry asks again; nothing is promoted without an answer.
        choice = (event.get("chosen_options") or [None])[0]
        if choice == self.REJECT:
            who = self._rejected(context, event)
            raise AirflowFailException(f"the prod start for {self.target} was rejected by {who}")
        try:
            result = super().execute_complete(context=context, event=event)
        except HITLTriggerEventError as exc:  # HITLTimeoutError: nobody decided within response_timeout
            raise AirflowFailException(f"no decision on the prod start for {self.target}: {exc}") from exc
        board = context["ti"].xcom_pull(task_ids=self.task_id, key="board") or {}
        out = dict(result)
        out["board"] = board
        if choice == self.APPROVE:
            refused = pc.check_start_decision(
                {**out, "responded_at": str(out.get("responded_at"))}, approvers=self.approvers,
                triggering_user=getattr(context.get("dag_run"), "triggering_user_name", None),
            )
            if refused:
                notify(f"Start decision for {self.target} refused: {escape_mrkdwn(refused.reason)}. Clear "
                       f"{self.task_id} to ask an assigned approver again", channel=self.patching_channel)
                out["refused"] = refused.reason
        return out

    def filed_requests(self, context) -> list[dict]:
        """The change requests this decision is about, ``[{"target", "request_id"}]``: the rollout's one."""
        filed = context["ti"].xcom_pull(task_ids=self.file_task_id) or {}
        return [{"target": self.target, "request_id": filed["request_id"]}] if filed.get("request_id") else []

    def label(self, context) -> str:
        """What the decision is for, in messages."""
        return self.target

    def stopped(self, context) -> str:
        """What a No stops, in messages."""
        return f"rollout of {context['params'].get('build_name', '?')}"

    def _recorded_decision(self, build_name: str) -> str | None:
        if not self.evidence_path:
            return None
        from image_rollout.hooks.github import GitHubEvidenceHook

        commits = GitHubEvidenceHook().find_commit(self.evidence_path, pc.rollout_key(build_name, f"approval-{self.target}"))
        return commits[0]["sha"] if commits else None

    def _rejected(self, context, event: dict) -> str:
        """Withdraw the train and say so; returns who rejected."""
        from image_rollout.hooks.flags import FlagsHook

        who = str(approver_name(event.get("responded_by_user")))
        done = []
        hook = None  # one per answer, made inside the try: a hook that cannot be made is said, not raised
        for item in self.filed_requests(context):
            request_id = item["request_id"]
            what = "left unapplied"
            try:
                # Withdraw the train (the requester may delete its own request until it is applied), so an
                # approved train nobody is going to start cannot be applied by mistake later.
                hook = hook or FlagsHook()
                if hook.get_change_request(request_id).get("status") != "completed":
                    hook.delete_change_request(request_id)
                    what = "withdrawn (deleted)"
            except Exception as exc:  # the run stops either way; say so rather than fail the answer
                log.warning("Could not delete change request %s: %s", request_id, exc)
                what = f"not deleted ({type(exc).__name__})"
            done.append(f"change request {escape_mrkdwn(str(request_id))} {what}")
        notify(
            f"Prod start for {escape_mrkdwn(self.label(context))} rejected in Airflow by {escape_mrkdwn(who)}: "
            f"{escape_mrkdwn(self.stopped(context))} stopped before {escape_mrkdwn(self.label(context))} changed; "
            + ("; ".join(done) or "no change request filed"),
            channel=self.patching_channel,
        )
        return who


def _iso_in(seconds: float) -> str:
    return iso(utcnow() + timedelta(seconds=seconds))
