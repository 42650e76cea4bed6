"""Promotions: point a target's rule of the worker-image flag at the new build's image map.

Runbook: "Promote the new image to <target> in Razee". A target is promoted either by a direct
flag write (dev, prestage) or through a change request ("train") that carries the evidence
hash (stage, prod). When the LaunchDarkly environment requires approvals, every promotion goes
through a change request.

Before EVERY write the task re-proves its preconditions from the systems of record, whatever
the task states and XCom say (issue 9 item 1): the run still owns the flag, no freeze, the map
is the verified build's, the rule is the verification baseline or our own earlier write (else
drift: a person decides), and for the canary the bake after stage-south's LaunchDarkly
``appliedDate`` and a valid start decision; for the remaining prod regions ap-south serving the
build and a soak measured since ap-south's latest promotion. A failed precondition holds
(deferred), says why once, and never promotes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from image_rollout import lazy_module
from image_rollout.contracts import ROLLBACK_TASK, from_ms, iso, parse_time_or_none, soak_task_id, utcnow
from image_rollout.operators.base import (
    FLAG_POOL,
    RolloutOperator,
    find_request,
)
from image_rollout.plan import RolloutPlan
from image_rollout.slack_messages import escape_mrkdwn

if TYPE_CHECKING:
    from image_rollout.payloads import BuildRecord, FiledChangeRequest, Promotion

pc = lazy_module("image_rollout.preconditions")
triggers = lazy_module("image_rollout.triggers")


def check_approval_settings(settings: dict | None, plan: RolloutPlan | None = None) -> None:
    """Refuse LaunchDarkly approval settings the rollout cannot work with (before any write).

    For VerifyBuildOperator to call right after reading ``FlagsHook.approval_settings()``; every
    write path calls it again on a fresh read. Raises ``preconditions.UnsupportedApprovalSettings``.
    """
    pc.check_approval_settings(settings)


def _applied_time(request: dict) -> str:
    """The promotion time is the system's own (LaunchDarkly's ``appliedDate``), so a bake measured
    from it survives reruns of the task that applied it."""
    applied = from_ms(request.get("appliedDate")) if request else None
    return iso(applied or utcnow())


def promotion(target: str, build: BuildRecord, *, changed: bool, promoted_at: str, **optional: str | None
              ) -> Promotion:
    """The one shape of a promotion in XCom; ``optional`` is ``request_id`` and/or ``evidence_sha``."""
    return {"target": target, "changed": changed, "previous": build["baseline"].get(target),
            "new": build["images"], "promoted_at": promoted_at, **optional}


def file_request(flags, *, target: str, build: dict, fields: dict, description: str) -> dict:
    """Find our request for the target and build (key AND content), else file it with the key."""
    found = find_request(flags, target, build["name"], build["images"])
    if found is not None:
        return found
    return flags.create_change_request(targets=[target], image_map=build["images"], fields=fields,
                                       description=description, key=pc.rollout_key(build["name"], target))


class _WriteOperator(RolloutOperator):
    """A task that writes the flag: the guards and the change-request path shared by all of them."""

    target: str

    def guard(self, context) -> tuple[dict, Any, dict | None]:
        """Freeze, ownership, approval settings: read now, before anything is written."""
        build = self.build_record(context)
        self.guard_write(context, build["name"])
        flags = self.flags(context)
        settings = self.approval_settings(flags)
        return build, flags, settings

    def wait_for_board(self, context, request: dict) -> None:
        """Defer until the change board decided; resumes in ``resume_request``, which re-proves all."""
        review = request.get("reviewStatus")
        if review == "declined":
            self.say(
                f"Change request {escape_mrkdwn(str(request['_id']))} for {self.target} was declined by the change "
                f"board: rollout of {self.build_record(context)['name']} stopped before {self.target} changed",
                escalate=True,
            )
            raise AirflowFailException(f"change request {request['_id']} for {self.target} was declined")
        if review == "approved" or request.get("status") == "completed":
            return
        deadline = utcnow() + timedelta(seconds=self.plan.change_request.timeout)
        self.defer(
            trigger=triggers.ChangeRequestTrigger(poll=self.plan.change_request.poll, deadline=iso(deadline),
                                         request_id=request["_id"]),
            method_name="resume_request",
        )

    def resume_request(self, context, event: dict) -> dict:
        if event.get("verdict") == "error":
            raise RuntimeError(f"cannot read change request: {event['reason']}")
        if event.get("verdict") == "deadline":
            self.say(f"Change request for {self.target} was not approved in time; rollout stopped", escalate=True)
            raise AirflowFailException(f"change request for {self.target} not approved before {event['reason']}")
        return self.execute(context)  # every precondition again: time passed while the board decided

    def apply(self, context, flags, request: dict, build: dict) -> dict:
        applied = flags.apply_change_request(request["_id"], f"Start promotion of {build['name']}")
        now = flags.rule_value(self.target)
        if now != build["images"]:
            raise AirflowFailException(
                f"change request {request['_id']} is applied but {self.target} does not serve build {build['name']} "
                "(rolled back or changed since): a new request is needed; nothing else written"
            )
        return applied

    def done(self, flags, build: dict, **optional: str | None) -> Promotion:
        """Already serving the build from our own write: keep the system's promotion time."""
        ours = self.ours_applied(flags, self.target, build) or {}
        return promotion(self.target, build, changed=False, promoted_at=_applied_time(ours),
                         request_id=ours.get("_id"), **optional)


class PromoteTargetOperator(_WriteOperator):
    """Point one target's rule at the new image map: a direct flag write, or a change request when the
    environment requires approvals.

    :param target: the rule's target name (``dev-south``).
    """

    def __init__(self, *, target: str, **kwargs) -> None:
        kwargs.setdefault("pool", FLAG_POOL)
        super().__init__(**kwargs)
        self.target = target

    def execute(self, context, event: dict | None = None) -> Promotion:
        build, flags, settings = self.guard(context)
        required = pc.requests_required(settings)
        if self.prove_rule(context, flags, self.target, needs_request=required) == "done":
            self.log.info("%s already serves build %s: no write", self.target, build["name"])
            return self.done(flags, build)
        if required:
            return self._via_request(context, flags, build)
        from image_rollout.hooks.flags import ApprovalRequired

        try:
            flags.point_rule(self.target, build["images"],
                             comment=f"Promoting immutable image build {build['name']} to {self.target}")
        except ApprovalRequired:
            self.log.warning("LaunchDarkly requires approval for %s now: filing a change request", self.target)
            return self._via_request(context, flags, build)
        self.say(f"Promoted immutable image build {build['name']} to {self.target}")
        return promotion(self.target, build, changed=True, promoted_at=iso(utcnow()))

    def _via_request(self, context, flags, build: dict) -> Promotion:
        fields = {
            "details": f"Promoting immutable image build {build['name']} to {self.target}",
            "backoutPlan": self.plan.change_request.backout_plan,
            "securityOnly": True,
            "target": self.target,
            "build": build["name"],
        }
        request = file_request(flags, target=self.target, build=build, fields=fields,
                               description=f"Promote immutable image build {build['name']} to {self.target}")
        self.wait_for_board(context, request)
        applied = self.apply(context, flags, request, build)
        self.say(f"Promoted immutable image build {build['name']} to {self.target} "
                 f"(change request {escape_mrkdwn(str(request['_id']))})")
        return promotion(self.target, build, changed=True, promoted_at=_applied_time(applied),
                         request_id=request["_id"])


class FileChangeRequestOperator(_WriteOperator):
    """File the Razee request ("train") for one target with the runbook's fields.

    The change board approves trains in LaunchDarkly; the rollout never reviews its own request.
    Our request (key ``immutable-image/<build>/<target>`` AND the build's map) is reused, never
    filed twice; anything else is someone else's.

    :param target: the rule's target name.
    :param evidence_hash: ``first`` (the first evidence commit) or ``latest`` (the newest).
    :param evidence_task_id: the task that made the first evidence commit.
    :param previous_deployment_task_id: the task that applied the previous stage's change request,
        the "Previous Deployment" a prod train must name (runbook: the stage-south promotion).
    """

    def __init__(self, *, target: str, evidence_hash: str, evidence_task_id: str | None,
                 previous_deployment_task_id: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target = target
        self.evidence_hash = evidence_hash
        self.evidence_task_id = evidence_task_id
        self.previous_deployment_task_id = previous_deployment_task_id

    def execute(self, context, event: dict | None = None) -> FiledChangeRequest:
        build, flags, _settings = self.guard(context)
        if self.prove_rule(context, flags, self.target, needs_request=True) == "done":
            ours = self.ours_applied(flags, self.target, build) or {}
            return {"target": self.target, "already_serving": True, "previous": build["baseline"].get(self.target),
                    "request_id": ours.get("_id")}
        github = self.github(context)
        path = self.plan.evidence_path(build["name"])
        if self.evidence_hash == "first":
            sha = (self.pull(context, self.evidence_task_id) or {}).get("sha") if self.evidence_task_id else None
        else:
            sha = github.latest_commit_sha(path)
        if not sha:
            raise AirflowFailException(f"no evidence commit for {path}: cannot file the change request")
        link = github.blob_url(path, sha)
        fields = {
            "acceptanceTests": {"link": link, "hashValue": sha, "hashType": "Git Commit"},
            "buildSecurityTests": {"link": link, "hashValue": sha, "hashType": "Git Commit"},
            "securityOnly": True,
            "securityImpact": self.plan.change_request.security_impact,
            "details": f"Promoting immutable image build {build['name']}-prod",
            "backoutPlan": self.plan.change_request.backout_plan,
            "previousDeployment": self._previous_deployment(context),
            "target": self.target,
            "build": build["name"],
        }
        request = file_request(flags, target=self.target, build=build, fields=fields,
                               description=f"Promote immutable image build {build['name']} to {self.target}")
        self.log.info("Change request %s for %s (key %s)", request["_id"], self.target,
                      pc.rollout_key(build["name"], self.target))
        return {"target": self.target, "request_id": request["_id"], "previous": build["baseline"].get(self.target),
                "evidence_sha": sha, "evidence_link": link, "already_serving": False,
                "review_status": request.get("reviewStatus")}

    def _previous_deployment(self, context) -> str | None:
        if not self.previous_deployment_task_id:
            return None
        applied = self.pull(context, self.previous_deployment_task_id)
        items = applied if isinstance(applied, list) else [applied]
        ids = [i["request_id"] for i in items if isinstance(i, dict) and i.get("request_id")]
        return ids[-1] if ids else None


class ApplyChangeRequestOperator(_WriteOperator):
    """Wait (deferred) for the change board's approval, re-prove every precondition, then apply.

    :param target: the rule's target name.
    :param file_task_id: the task that filed the request.
    :param approval_task_id: the Airflow start decision (HITL) for the canary, if any.
    :param bake_stage: for the canary: the stage the bake follows (its target's LaunchDarkly
        ``appliedDate`` plus ``bake_seconds`` must be past).
    :param bake_seconds: the bake.
    :param soak_region: for the remaining prod regions: the canary region whose soak must hold.
    """

    def __init__(self, *, target: str, file_task_id: str, approval_task_id: str | None = None,
                 bake_target: str | None = None, bake_seconds: float | None = None,
                 soak_region: str | None = None, **kwargs) -> None:
        kwargs.setdefault("pool", FLAG_POOL)
        super().__init__(**kwargs)
        self.target = target
        self.file_task_id = file_task_id
        self.approval_task_id = approval_task_id
        self.bake_target = bake_target
        self.bake_seconds = bake_seconds
        self.soak_region = soak_region

    def _filed(self, context) -> dict:
        index = context["ti"].map_index
        filed = self.pull(context, self.file_task_id, None if index in (None, -1) else index)
        if not filed:
            raise RuntimeError(f"no change request in XCom of {self.file_task_id}")
        return filed

    def execute(self, context, event: dict | None = None) -> Promotion:
        build, flags, _settings = self.guard(context)
        filed = self._filed(context)
        if self.approval_task_id:
            decision = self.pull(context, self.approval_task_id)
            if not (isinstance(decision, dict) and decision.get("already_serving")):
                refused = pc.check_start_decision(decision, approvers=self.plan.approvers.users,
                                                  triggering_user=self.triggering_user(context))
                if refused:
                    self.hold(context, refused)
        state = self.prove_rule(context, flags, self.target, needs_request=True)
        if state == "done":
            self.log.info("%s serves build %s from our own applied request: no write", self.target, build["name"])
            return self.done(flags, build, evidence_sha=filed.get("evidence_sha"))
        if self.bake_target:
            self.pass_wait(context, self._bake_hold(flags, build))
        if self.soak_region:
            self.pass_wait(context, self._soak_hold(context, flags, build))
        if filed.get("request_id"):
            request = flags.get_change_request(filed["request_id"], missing_ok=True)
            if request is None:  # withdrawn when a start was rejected, or deleted by hand: never retried
                raise AirflowFailException(pc.train_withdrawn(filed["request_id"], self.target, self.file_task_id))
        else:
            request = find_request(flags, self.target, build["name"], build["images"])
            if not request:
                raise AirflowFailException(f"no change request of ours for {self.target}: file it first")
        self.wait_for_board(context, request)
        applied = self.apply(context, flags, request, build)
        self.say(f"Promoted immutable image build {build['name']} to {self.target} "
                 f"(change request {escape_mrkdwn(str(request['_id']))})")
        return promotion(self.target, build, changed=True, promoted_at=_applied_time(applied),
                         request_id=request["_id"], evidence_sha=filed.get("evidence_sha"))

    # Resumed from the old trigger path (a run deferred before this version): re-prove everything.
    def execute_complete(self, context, event: dict) -> dict:
        return self.resume_request(context, event)

    def _bake_hold(self, flags, build: dict) -> pc.Hold | None:
        serves = flags.rule_value(self.bake_target) == build["images"]
        request = find_request(flags, self.bake_target, build["name"], build["images"]) or {}
        applied = from_ms(request.get("appliedDate")) if request.get("status") == "completed" else None
        hold = pc.check_bake(stage_serves_build=serves, stage_applied=applied,
                             bake_seconds=float(self.bake_seconds or 0), now=utcnow())
        if hold and not serves:
            return pc.Hold("bake", f"{self.bake_target} does not serve this build now")
        return hold

    def _soak_hold(self, context, flags, build: dict) -> pc.Hold | None:
        region = self.soak_region
        serves = flags.rule_value(region) == build["images"]
        soak = self.pull(context, soak_task_id(self.plan))
        ours = find_request(flags, region, build["name"], build["images"]) or {}
        applied = [from_ms(ours.get("appliedDate"))] if ours.get("status") == "completed" else []
        rollback = self.pull(context, ROLLBACK_TASK) or {}
        rollbacks = [parse_time_or_none(r.get("at")) for r in rollback.get("rolled_back", []) if r.get("target") == region]
        return pc.check_soak(canary_serves_build=serves, soak=soak, build_name=build["name"],
                             latest=pc.latest_promotion(applied, rollbacks))
