"""Backout on demand: put targets back on the build they served before a rollout (issue 11 item 2).

The runbook's backout plan, "Rollback to previous version", as a task a person starts. It writes
through the promotions' own path: the same guards (freeze, LaunchDarkly approval settings read
now), change requests ("trains") keyed ``immutable-image/<build>/backout/<target>`` where the
target needs one, approved by the change board, the prod start decision from an assigned approver
who did not trigger the run, and a keyed evidence commit. Before each write the target's rule is
read again: only a rule that serves the build being backed out is changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from image_rollout import lazy_module
from image_rollout.contracts import (
    BACKOUT_APPROVE_TASK,
    BACKOUT_FILE_TASK,
    BACKOUT_RESOLVE_TASK,
    ROLLOUT_DAG_ID,
    VERIFY_TASK,
    iso,
    promotion_task_ids,
    utcnow,
)
from image_rollout.operators.approval import ProdChangeApprovalOperator
from image_rollout.operators.base import (
    FLAG_POOL,
    RolloutOperator,
    find_request,
)
from image_rollout.operators.promote import _WriteOperator
from image_rollout.slack_messages import escape_mrkdwn

if TYPE_CHECKING:
    from image_rollout.payloads import BuildRecord

bo = lazy_module("image_rollout.backout")
pc = lazy_module("image_rollout.preconditions")
inputs = lazy_module("image_rollout.inputs")


def owner(build_name: str) -> str:
    """The key owner of a backout's change requests: ``immutable-image/<build>/backout/<target>``."""
    return f"{build_name}/backout"


class ResolveBackoutOperator(RolloutOperator):
    """Check the request and work out the plan: which targets go back to which build, and how.

    Refuses (fails, nothing written) an unknown target, a build no rollout verified, an unknown
    ``to_build``, an empty reason, or a target with no record of what it served before. The plan goes
    to the task log and Slack; the build's record is pushed (key ``build``) for the tasks that write.
    """

    def execute(self, context) -> dict:
        params = context["params"]
        try:
            return self._resolve(context, params)
        except bo.BackoutRefused as exc:
            raise AirflowFailException(f"backout refused, nothing written: {exc}") from None

    def _resolve(self, context, params) -> dict:
        name = params.get("build_name")
        if not inputs.is_build_name(name):
            raise bo.BackoutRefused(f"build_name {name!r} is not a build name (NNN-NNNN-NNN-YYYYMMDD)")
        reason = bo.check_reason(params.get("reason"))
        targets = bo.resolve_targets(params.get("targets", bo.ALL), [t.target for t in self.plan.targets])
        dry_run = bool(params.get("dry_run"))
        to_build = params.get("to_build") or None
        if to_build is not None and (not inputs.is_build_name(to_build) or to_build == name):
            raise bo.BackoutRefused(f"to_build {to_build!r} must be another build's name, not the one backed out")
        runs = self.rollout_records(context, name)
        build = self._build_record(context, name, runs)
        flags = self.flags(context)
        settings = self.approval_settings(flags)
        flag = flags.get_flag()
        names = bo.build_names(flag.get("variations") or [])
        to_map = self._map_of(context, to_build, flag) if to_build else None
        before = bo.before_rollout(runs, targets)
        decisions = bo.decide(targets, build_name=name, build_map=build["images"], current=flags.rule_values(),
                              before=before, to_map=to_map, names=names)
        decisions = bo.route(decisions, self.plan, approvals_required=pc.requests_required(settings))
        text = bo.plan_text(name, decisions, reason=reason, names=names, dry_run=dry_run)
        self.log.info("%s", text)
        who = self.triggering_user(context) or "unknown"
        self.say(f"{escape_mrkdwn(text)}\n(requested by {escape_mrkdwn(who)})", escalate=not dry_run)
        context["ti"].xcom_push(key="build", value=build)
        return {"build_name": name, "reason": reason, "dry_run": dry_run, "to_build": to_build, "requested_by": who,
                "rollout_runs": [r["run_id"] for r in runs], "decisions": decisions, "plan": text,
                "names": names, "at": iso(utcnow())}

    # -- what the rollout recorded --------------------------------------------------------------------
    def rollout_records(self, context, build_name: str) -> list[dict]:
        """Every rollout run that verified ``build_name``: its verification and its promotions' records."""
        ti = context["ti"]
        states = ti.get_task_states(dag_id=ROLLOUT_DAG_ID, task_ids=[VERIFY_TASK])
        out = []
        for run_id, tasks in sorted(states.items()):
            if str(tasks.get(VERIFY_TASK)) != "success":
                continue
            verified = ti.xcom_pull(task_ids=VERIFY_TASK, dag_id=ROLLOUT_DAG_ID, run_id=run_id)
            if not isinstance(verified, dict) or verified.get("name") != build_name or not verified.get("images"):
                continue
            promotions = []
            for stage in self.plan.stages:
                for task_id in promotion_task_ids(stage):
                    pulled = ti.xcom_pull(task_ids=task_id, dag_id=ROLLOUT_DAG_ID, run_id=run_id)
                    promotions += [p for p in (pulled if isinstance(pulled, list) else [pulled]) if isinstance(p, dict)]
            out.append({"run_id": run_id, "verified": verified, "baseline": verified.get("baseline") or {},
                        "promotions": promotions})
        return out

    def _build_record(self, context, name: str, runs: list[dict]) -> BuildRecord:
        """The build as its rollout verified it, else as its evidence file states it; else refused."""
        if runs:
            v = runs[-1]["verified"]
            return {k: v.get(k) for k in ("name", "images", "console_url", "console_text", "number", "url")}
        github = self.github(context)
        path = self.plan.evidence_path(name)
        found = github.get_file(path)
        images = bo.image_ids_from_evidence(found[0] if found else None)
        if images is None:
            raise bo.BackoutRefused(f"unknown build {name}: no rollout run of {ROLLOUT_DAG_ID} verified it and "
                                    f"there is no evidence file {path} with its image ids (never rolled out)")
        return {"name": name, "images": images, "console_url": github.blob_url(path, github.latest_commit_sha(path)),
                "console_text": ""}

    def _map_of(self, context, build_name: str, flag: dict) -> dict:
        """``to_build``'s image map: the flag's variation of that name, else its rollout's or evidence's record."""
        for variation in flag.get("variations") or []:
            if variation.get("name") == build_name and isinstance(variation.get("value"), dict):
                return {k: str(v) for k, v in sorted(variation["value"].items())}
        runs = self.rollout_records(context, build_name)
        if runs:
            return dict(runs[-1]["verified"]["images"])
        found = self.github(context).get_file(self.plan.evidence_path(build_name))
        images = bo.image_ids_from_evidence(found[0] if found else None)
        if images is None:
            raise bo.BackoutRefused(f"unknown to_build {build_name}: no flag variation, rollout or evidence file "
                                    "names its image map")
        return images


class _BackoutWriter(_WriteOperator):
    """The promotions' write path for the backout: its build comes from ``resolve_backout``."""

    build_task_id = BACKOUT_RESOLVE_TASK
    build_key = "build"
    target = "the backout's targets"

    def guard_write(self, context, build_name: str) -> None:
        # A backout is not a rollout: it owns no build's turn on the flag, so a newer build does not stop it
        # (a rule that serves the newer build is left alone anyway). The freeze holds it like any write.
        self.hold_if_frozen(context)

    def resolved(self, context) -> dict:
        return self.pull(context, BACKOUT_RESOLVE_TASK) or {}

    def restores(self, context) -> list[dict]:
        return [d for d in self.resolved(context).get("decisions", []) if d["action"] == "restore"]

    def comment(self, context, target: str) -> str:
        resolved = self.resolved(context)
        return (f"Rollback to previous version: backout of immutable image build {resolved.get('build_name')} "
                f"from {target} ({resolved.get('reason')})")

    def fields(self, context) -> dict:
        resolved = self.resolved(context)
        return {"backoutPlan": f"Re-promote build {resolved.get('build_name')} with a new rollout",
                "securityOnly": True, "securityImpact": self.plan.change_request.security_impact}

    def rule_state(self, flags, build: dict, d: dict, *, needs_request: bool) -> tuple[str, dict | None]:
        """Read the rule now: ``write`` (it serves the build backed out), ``done`` (our restore is in) or
        ``left`` (anything else: someone else's, left alone); and our applied request, if any."""
        current = flags.rule_value(d["target"])
        ours = find_request(flags, d["target"], owner(build["name"]), d["to"])
        applied = ours if ours and ours.get("status") == "completed" else None
        state = pc.classify_rule(current, baseline=build["images"], build_map=d["to"],
                                 ours_applied=applied is not None, needs_request=needs_request)
        return ("left" if state == "drift" else state), applied


class FileBackoutRequestsOperator(_BackoutWriter):
    """File the backout's change requests (one per target that needs a train), keyed, never twice."""

    def execute(self, context, event: dict | None = None) -> dict:
        build, flags, _settings = self.guard(context)
        filed = []
        for d in self.restores(context):
            if d.get("via") != "change request":
                continue
            if self.rule_state(flags, build, d, needs_request=True)[0] != "write":
                self.log.info("%s does not serve build %s now: no request filed", d["target"], build["name"])
                continue
            request = self.file_restore_request(flags, target=d["target"], to=d["to"], owner=owner(build["name"]),
                                                comment=self.comment(context, d["target"]), fields=self.fields(context))
            self.log.info("Backout change request %s for %s (key %s)", request["_id"], d["target"],
                          pc.rollout_key(owner(build["name"]), d["target"]))
            filed.append({"target": d["target"], "request_id": request["_id"], "start_decision": d["start_decision"],
                          "review_status": request.get("reviewStatus")})
        return {"requests": filed}


class BackoutApprovalOperator(ProdChangeApprovalOperator):
    """The prod start decision for the backout's prod trains: the rollout's own rules (assigned approvers,
    no default, not the identity that triggered the run), asked once the change board approved them.
    Skipped when the backout changes no prod target."""

    def filed_requests(self, context) -> list[dict]:
        filed = context["ti"].xcom_pull(task_ids=self.file_task_id) or {}
        return [r for r in filed.get("requests", []) if r.get("start_decision")]

    def label(self, context) -> str:
        return ", ".join(r["target"] for r in self.filed_requests(context)) or "no prod target"

    def stopped(self, context) -> str:
        return f"backout of {context['params'].get('build_name', '?')}"

    def execute(self, context, event: dict | None = None):
        if not self.filed_requests(context):
            raise AirflowSkipException("the backout restores no prod target: no start decision needed")
        return super().execute(context, event)


class RestoreTargetsOperator(_BackoutWriter):
    """Restore each target of the plan, record a "Backout" section in the build's evidence, tell Slack.

    Each target is proved again right before its write (it serves the build backed out; else it is
    left alone and named). Prod targets need the valid start decision of ``approve_backout``.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("pool", FLAG_POOL)
        super().__init__(**kwargs)

    def execute(self, context, event: dict | None = None) -> dict:
        if event and event.get("verdict") == "deadline":
            raise AirflowFailException(f"a backout change request was not approved in time ({event.get('reason')})")
        build, flags, settings = self.guard(context)
        required = pc.requests_required(settings)
        resolved = self.resolved(context)
        restores = self.restores(context)
        if any(d.get("start_decision") for d in restores):
            decision = self.pull(context, BACKOUT_APPROVE_TASK)
            refused = pc.check_start_decision(decision, approvers=self.plan.approvers.users,
                                              triggering_user=self.triggering_user(context))
            if refused:
                self.hold(context, refused)
        ti = context["ti"]
        done: list[dict] = ti.xcom_pull(task_ids=self.task_id, key="restored") or []
        left = [{"target": d["target"], "why": d["why"]} for d in resolved.get("decisions", [])
                if d["action"] == "left"]
        filed = {r["target"]: r for r in (self.pull(context, BACKOUT_FILE_TASK) or {}).get("requests", [])}
        for d in restores:
            if any(r["target"] == d["target"] for r in done):
                continue
            via_request = required or d.get("via") == "change request"
            state, applied = self.rule_state(flags, build, d, needs_request=via_request)
            if state == "left":
                now = flags.rule_value(d["target"])
                left.append({"target": d["target"], "why": f"it serves {bo.describe(now, resolved.get('names'))} "
                                                          f"now, not build {build['name']}: not ours to change"})
                continue
            request_id = (applied or {}).get("_id")  # a rerun after our own restore: the same record
            if state == "write":
                request_id = self._write(context, flags, build, d, via_request, filed.get(d["target"]))
                if flags.rule_value(d["target"]) != d["to"]:
                    raise AirflowFailException(f"{d['target']} does not serve the restored map after the write: "
                                               "changed meanwhile; nothing else written")
            done = [*done, {"target": d["target"], "restored": d["to"], "to_build": d.get("to_build"),
                            "request_id": request_id, "at": iso(utcnow())}]
            ti.xcom_push(key="restored", value=done)
        return self._report(context, build, resolved, done, left)

    def _write(self, context, flags, build: dict, d: dict, via_request: bool, filed: dict | None) -> str | None:
        from image_rollout.hooks.flags import ApprovalRequired

        comment = self.comment(context, d["target"])
        if not via_request:
            try:
                flags.point_rule(d["target"], d["to"], comment=comment, variation_name=d.get("to_build"))
                return None
            except ApprovalRequired:
                self.log.warning("LaunchDarkly requires approval for %s now: filing a change request", d["target"])
        request = flags.get_change_request(filed["request_id"]) if filed else None
        if request is not None and request.get("status") == "completed":
            request = None  # applied before, and the rule serves the build again: a new request
        applied = self.restore_via_request(context, flags, target=d["target"], to=d["to"], owner=owner(build["name"]),
                                           comment=comment, fields=self.fields(context), request=request)
        return applied.get("_id")

    def _report(self, context, build: dict, resolved: dict, done: list[dict], left: list[dict]) -> dict:
        names = resolved.get("names") or {}
        who = resolved.get("requested_by") or self.triggering_user(context) or "unknown"
        lines = [f"Backout requested by {who} at {resolved.get('at') or iso(utcnow())}: {resolved.get('reason')}",
                 f"Airflow run {context['run_id']}"]
        lines += [f"{r['target']} restored to {bo.describe(r['restored'], names)}"
                  + (f" (change request {r['request_id']})" if r.get("request_id") else "") for r in done]
        lines += [f"{x['target']} left alone: {x['why']}" for x in left]
        if not done:
            lines.append(f"No target served build {build['name']}: nothing restored")
        sha = self._record(context, "Backout", tuple(lines), f"backout-{context['run_id']}")
        github = self.github(context)
        path = self.plan.evidence_path(build["name"])
        url = github.blob_url(path, sha)
        restored_text = ", ".join(r["target"] for r in done) or "none"
        left_text = "; ".join(f"{x['target']} ({x['why']})" for x in left) or "none"
        self.say(f"BACKOUT of immutable image build {build['name']} by {escape_mrkdwn(who)} "
                 f"({escape_mrkdwn(str(resolved.get('reason')))}). Restored: {restored_text}. "
                 f"Left alone: {escape_mrkdwn(left_text)}. Evidence: {url}", escalate=True)
        return {"build_name": build["name"], "reason": resolved.get("reason"), "requested_by": who,
                "restored": done, "left_alone": left, "evidence_sha": sha, "evidence_url": url}

