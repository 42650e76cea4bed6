"""Promotions: point a target's rule of the worker-image flag at the new build's image map.

Runbook: "Promote the new image to <target> in Razee". A target is promoted either by a direct
flag write (dev, prestage) or through a change request ("train") that carries the evidence
hash (stage, prod). Every write reads the rule first and records the map it served before,
so a rerun never writes twice and a rollback restores what was really there.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk.exceptions import AirflowFailException

from image_rollout.operators.base import FLAG_POOL, RolloutOperator, flags_hook, github_hook, iso, utcnow
from image_rollout.slack import escape_mrkdwn
from image_rollout.triggers import ChangeRequestTrigger


def _promoted_at(request: dict) -> str:
    """The promotion time is the system's own (LaunchDarkly's ``appliedDate``), so a bake measured
    from it survives reruns of the task that applied it."""
    applied_ms = request.get("appliedDate")
    return iso(datetime.fromtimestamp(applied_ms / 1000, tz=UTC) if applied_ms else utcnow())


class PromoteTargetOperator(RolloutOperator):
    """Point one target's rule at the new image map with a direct flag write.

    :param target: the rule's target name (``dev-south``).
    """

    template_fields = ("target",)

    def __init__(self, *, target: str, **kwargs) -> None:
        kwargs.setdefault("pool", FLAG_POOL)
        super().__init__(**kwargs)
        self.target = target

    def execute(self, context, event: dict | None = None) -> dict:
        build, flags, before = self.read_rule(context, self.target)
        if before == build["images"]:
            self.log.info("%s already serves build %s: no write", self.target, build["name"])
            return {"target": self.target, "previous": build["baseline"].get(self.target), "changed": False,
                    "promoted_at": iso(utcnow()), "new": build["images"]}
        flags.point_rule(self.target, build["images"],
                         comment=f"Promoting immutable image build {build['name']} to {self.target}")
        self.say(f"Promoted immutable image build {build['name']} to {self.target}")
        return {"target": self.target, "previous": before, "changed": True, "promoted_at": iso(utcnow()),
                "new": build["images"]}


class FileChangeRequestOperator(RolloutOperator):
    """File the Razee request ("train") for one target with the runbook's fields.

    Stage trains are auto-approved; prod trains wait for approval. An existing request for the
    same build and target is reused, never filed twice.

    :param target: the rule's target name.
    :param evidence_hash: ``first`` (the first evidence commit) or ``latest`` (the newest).
    :param evidence_task_id: the task that made the first evidence commit.
    :param previous_deployment_task_id: the task that applied the previous stage's change request,
        the "Previous Deployment" a prod train must name (runbook: the stage-south promotion).
    """

    template_fields = ("target",)

    def __init__(self, *, target: str, evidence_hash: str, evidence_task_id: str | None,
                 previous_deployment_task_id: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target = target
        self.evidence_hash = evidence_hash
        self.evidence_task_id = evidence_task_id
        self.previous_deployment_task_id = previous_deployment_task_id

    def execute(self, context, event: dict | None = None) -> dict:
        build, flags, before = self.read_rule(context, self.target)
        if before == build["images"]:
            existing = flags.find_change_request(self.target, build["name"])
            return {"target": self.target, "already_serving": True, "previous": build["baseline"].get(self.target),
                    "request_id": existing["_id"] if existing else None}
        github = github_hook()
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
        request = flags.find_change_request(self.target, build["name"])
        if request is None:
            request = flags.create_change_request(
                targets=[self.target], image_map=build["images"], fields=fields,
                description=f"Promote immutable image build {build['name']} to {self.target}",
            )
            self.log.info("Filed change request %s for %s", request["_id"], self.target)
        else:
            self.log.info("Reusing change request %s for %s", request["_id"], self.target)
        return {"target": self.target, "request_id": request["_id"], "previous": before, "evidence_sha": sha,
                "evidence_link": link, "already_serving": False,
                "review_status": request.get("reviewStatus")}


    def _previous_deployment(self, context) -> str | None:
        if not self.previous_deployment_task_id:
            return None
        applied = self.pull(context, self.previous_deployment_task_id)
        items = applied if isinstance(applied, list) else [applied]
        ids = [i["request_id"] for i in items if isinstance(i, dict) and i.get("request_id")]
        return ids[-1] if ids else None


class ApplyChangeRequestOperator(RolloutOperator):
    """Wait (deferred) for the change request's approval, then start it: the promotion itself.

    A declined request stops the rollout before the target changes.

    :param target: the rule's target name.
    :param file_task_id: the task that filed the request.
    :param approval_task_id: the Airflow approval (HITL) task whose approver is recorded, if any.
    """

    template_fields = ("target",)

    def __init__(self, *, target: str, file_task_id: str, approval_task_id: str | None = None, **kwargs) -> None:
        kwargs.setdefault("pool", FLAG_POOL)
        super().__init__(**kwargs)
        self.target = target
        self.file_task_id = file_task_id
        self.approval_task_id = approval_task_id

    def _filed(self, context) -> dict:
        index = context["ti"].map_index
        filed = self.pull(context, self.file_task_id, None if index in (None, -1) else index)
        if not filed:
            raise RuntimeError(f"no change request in XCom of {self.file_task_id}")
        return filed

    def execute(self, context, event: dict | None = None) -> dict:
        build = self.build(context)
        self.guard_write(context, build["name"])
        filed = self._filed(context)
        flags = flags_hook()
        if filed.get("already_serving"):
            # A rerun: keep the original promotion time, so a bake or soak measured from it
            # neither restarts nor is cut short.
            applied = flags.get_change_request(filed["request_id"]) if filed.get("request_id") else {}
            return {"target": self.target, "changed": False, "previous": filed["previous"],
                    "request_id": filed.get("request_id"), "promoted_at": _promoted_at(applied)}
        request = flags.get_change_request(filed["request_id"])
        approver = self._airflow_approver(context)
        if approver and request.get("reviewStatus") == "pending":
            request = flags.review_change_request(
                filed["request_id"], "approve", f"Approved in Airflow by {approver}"
            )
        return self._decide(context, request, filed, guarded=True)

    def execute_complete(self, context, event: dict) -> dict:
        if event.get("verdict") == "error":
            raise RuntimeError(f"cannot read change request: {event['reason']}")
        if event.get("verdict") == "deadline":
            self.say(f"Change request for {self.target} was not approved in time; rollout stopped", escalate=True)
            raise AirflowFailException(f"change request for {self.target} not approved before {event['reason']}")
        return self._decide(context, event["request"], self._filed(context), guarded=False)

    def _decide(self, context, request: dict, filed: dict, *, guarded: bool) -> dict:
        """Apply an approved request. ``guarded``: the freeze and supersession were checked in this
        same call; an approval that arrived later (resumed from the trigger) is checked again."""
        build = self.build(context)
        review = request.get("reviewStatus")
        if review == "declined":
            self.say(
                f"Change request {escape_mrkdwn(request['_id'])} for {self.target} was declined: "
                f"rollout of {build['name']} stopped before {self.target} changed",
                escalate=True,
            )
            raise AirflowFailException(f"change request {request['_id']} for {self.target} was declined")
        if review != "approved" and request.get("status") != "completed":
            deadline = utcnow() + timedelta(seconds=self.plan.change_request.timeout)
            self.defer(
                trigger=ChangeRequestTrigger(poll=self.plan.change_request.poll, deadline=iso(deadline),
                                             request_id=request["_id"]),
                method_name="execute_complete",
            )
        if not guarded:
            # The approval may arrive while the line is stopped: the freeze holds the apply too.
            self.guard_write(context, build["name"])
        applied = flags_hook().apply_change_request(request["_id"], f"Start promotion of {build['name']}")
        promoted_at = _promoted_at(applied)
        self.say(f"Promoted immutable image build {build['name']} to {self.target} "
                 f"(change request {escape_mrkdwn(request['_id'])})")
        return {"target": self.target, "changed": True, "previous": filed["previous"], "request_id": request["_id"],
                "evidence_sha": filed.get("evidence_sha"), "promoted_at": promoted_at}

    def _airflow_approver(self, context) -> str | None:
        if not self.approval_task_id:
            return None
        result = self.pull(context, self.approval_task_id)
        if not result or result.get("chosen_options") != ["Approve"]:
            # Never promote prod without the recorded approval: fail closed, don't skip quietly.
            raise AirflowFailException(f"no Airflow approval recorded by {self.approval_task_id}: {result!r}")
        user = result.get("responded_by_user") or {}
        return user.get("name") or user.get("id") or "unknown"
