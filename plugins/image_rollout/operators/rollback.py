"""Rollback: the runbook's backout plan ("Rollback to previous version") when a gate fails.

README, "What happens when something fails": a failed gate restores its target and every target
promoted after the last passed gate to the image map it served before; earlier environments keep the new image.
The map to restore is the one read just before the promotion (its task's XCom), else the
snapshot taken at build verification. What a rule serves now is read back from the flag,
so running this twice writes nothing the second time.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from image_rollout import lazy_module
from image_rollout.contracts import gate_task_id, iso, promotion_task_ids, stage_of, utcnow
from image_rollout.operators.base import FLAG_POOL, RolloutOperator
from image_rollout.plan import RolloutPlan, StagePlan
from image_rollout.slack_messages import escape_mrkdwn

pc = lazy_module("image_rollout.preconditions")


def targets_to_restore(plan: RolloutPlan, states: dict[str, str]) -> tuple[StagePlan | None, list[str]]:
    """The failed gate, and the targets promoted after the last gate that passed (in plan order)."""
    failed_gate = None
    last_passed = -1
    for index, stage in enumerate(plan.stages):
        task_id = gate_task_id(stage)
        if task_id is None:
            continue
        state = states.get(task_id)
        if state == "success":
            last_passed = index
        elif state == "failed" and failed_gate is None:
            failed_gate = stage
    if failed_gate is None:
        return None, []
    failed_index = plan.stages.index(failed_gate)
    targets = [t.target for stage in plan.stages[last_passed + 1: failed_index + 1] for t in stage.targets]
    return failed_gate, targets


class RollbackOperator(RolloutOperator):
    """Restore the targets a failed gate does not vouch for, record it, and escalate.

    A target still serving THIS build's map is restored, superseded or not (issue 9 item 5): a
    newer build that took over the flag does not own a rule that still serves ours. Every other
    target is left alone, and the rollback names each one and why (item 4). When LaunchDarkly
    requires approvals, each restore is a change request (key ``immutable-image/<build>/rollback/<target>``)
    that the board approves and this task applies.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("pool", FLAG_POOL)
        super().__init__(**kwargs)

    def _states(self, context) -> dict[str, str]:
        ti = context["ti"]
        run_id = context["run_id"]
        result = ti.get_task_states(dag_id=ti.dag_id, run_ids=[run_id])
        states = result.get(run_id, result)
        return {task_id: str(state) if state is not None else "" for task_id, state in states.items()}

    def _previous(self, context, stage: StagePlan, target: str, build: dict) -> dict | None:
        for task_id in promotion_task_ids(stage):
            pulled = self.pull(context, task_id)
            for item in pulled if isinstance(pulled, list) else [pulled]:
                if isinstance(item, dict) and item.get("target") == target and item.get("previous"):
                    return item["previous"]
        return build["baseline"].get(target)

    def execute(self, context, event: dict | None = None) -> dict:
        from image_rollout.evidence_commits import append_to_evidence

        if event and event.get("verdict") == "declined":
            self.say(f"The change board declined a rollback request ({event.get('request', {}).get('_id')}): "
                     "restore by hand now", escalate=True)
            raise AirflowFailException("rollback change request declined")
        states = self._states(context)
        failed_gate, targets = targets_to_restore(self.plan, states)
        if failed_gate is None:
            # The failed task already escalated; a second message from here would only mislead.
            raise AirflowSkipException("no gate failed: nothing to roll back (the failed task has escalated)")
        build = self.build_record(context)
        self.hold_if_frozen(context)
        newer = self.superseded_by(build["name"])
        decision = self.pull_decision(context, gate_task_id(failed_gate))
        flags = self.flags(context)
        settings = self.approval_settings(flags)
        current = flags.rule_values()
        previous = {}
        for target in targets:
            previous[target] = self._previous(context, stage_of(self.plan, target), target, build)
        decisions = pc.rollback_decisions(targets, current=current, build_map=build["images"],
                                          previous=previous, newer_build=newer)
        # The targets outside the failed gate's reach are named too, so the record accounts for every one.
        for target in (t.target for t in self.plan.targets if t.target not in targets):
            serves_build = current.get(target) is not None and dict(current[target]) == dict(build["images"])
            decisions.append({"target": target, "action": "left", "why": (
                "keeps the new image: a gate that passed vouches for it" if serves_build
                else "not promoted by this rollout")})
        ti = context["ti"]
        done = ti.xcom_pull(task_ids=self.task_id, key="restored") or []
        comment = f"Rollback to previous version: gate {failed_gate.id} failed for {build['name']}"
        for d in decisions:
            if d["action"] != "restore":
                continue
            if pc.requests_required(settings):
                self._restore_via_request(context, flags, build, d, comment)
            else:
                flags.point_rule(d["target"], d["to"], comment=comment)
            done = [*[x for x in done if x["target"] != d["target"]],
                    {"target": d["target"], "restored": d["to"], "at": iso(utcnow()), "why": d["why"]}]
            ti.xcom_push(key="restored", value=done)
        restored_targets = {r["target"] for r in done}
        left = [d for d in decisions if d["action"] == "left" and d["target"] not in restored_targets]
        reason = decision.get("reason", "see the task log")
        lines = [f"Gate {failed_gate.id} failed at {iso(utcnow())}: {reason}"]
        if newer:
            lines.append(f"Newer build {newer} owns the flag; targets still serving {build['name']} are restored anyway")
        lines += [f"{r['target']} restored to the previous image map {r['restored']} ({r['why']})" for r in done]
        lines += [f"{d['target']} left alone: {d['why']}" for d in left]
        if not done:
            lines.append("No target served the failing build: nothing restored")
        path = self.plan.evidence_path(build["name"])
        github = self.github(context)
        sha = append_to_evidence(
            github, self.plan, context, build, "Rollback", lines,
            f"Record rollback of immutable image build {build['name']} after gate {failed_gate.id}",
            key=pc.rollout_key(build["name"], f"rollback-{failed_gate.id}"),
        )
        restored_text = ", ".join(r["target"] for r in done) or "none"
        left_text = "; ".join(f"{d['target']} ({d['why']})" for d in left) or "none"
        self.say(
            f"ROLLBACK of immutable image build {build['name']}: gate {failed_gate.id} failed "
            f"({escape_mrkdwn(reason)}). Restored: {restored_text}. Left alone: {escape_mrkdwn(left_text)}. "
            f"Evidence: {github.blob_url(path, sha)}. Nothing further is promoted.",
            escalate=True,
        )
        return {"failed_gate": failed_gate.id, "reason": reason, "rolled_back": done,
                "left_alone": left, "superseded_by": newer, "evidence_sha": sha}

    def _restore_via_request(self, context, flags, build: dict, d: dict, comment: str) -> None:
        """Under required approvals: our keyed rollback request, approved by the board, applied here."""
        self.restore_via_request(context, flags, target=d["target"], to=d["to"], owner=f"{build['name']}/rollback",
                                 comment=comment, fields={"backoutPlan": "Re-promote with a new rollout"})

    def pull_decision(self, context, task_id: str | None) -> dict:
        if task_id is None:
            return {}
        return context["ti"].xcom_pull(task_ids=task_id, key="decision") or {}
