"""Rollback: the runbook's backout plan ("Rollback to previous version") when a gate fails.

DESIGN.md section 5: a failed gate restores its target and every target promoted after the
last passed gate to the image map it served before; earlier environments keep the new image.
The map to restore is the one read just before the promotion (its task's XCom), else the
snapshot taken at build verification. What a rule serves now is read back from the flag,
so running this twice writes nothing the second time.
"""

from __future__ import annotations

from image_rollout.evidence import Record
from image_rollout.operators.base import FLAG_POOL, RolloutOperator, flags_hook, github_hook, iso, utcnow
from image_rollout.operators.evidence import append_record, evidence_for
from image_rollout.plan import RolloutPlan, StagePlan
from image_rollout.slack import escape_mrkdwn


def gate_task_id(stage: StagePlan) -> str | None:
    if stage.carrier:
        return f"{stage.id}.reload_check_{stage.id}"
    if stage.kind == "bake":
        return f"{stage.id}.wait_bake"
    if stage.kind == "soak_gate":
        return f"{stage.id}.soak_gate"
    return None


def promotion_task_ids(stage: StagePlan) -> list[str]:
    """Tasks whose XCom records a promotion of the stage's targets."""
    if stage.kind != "promote":
        return []
    if stage.change_request:
        return [f"{stage.id}.apply_change_request_{stage.id}", f"{stage.id}.file_change_request_{stage.id}"]
    return [f"{stage.id}.promote_{stage.id}"]


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
    """Restore the targets a failed gate does not vouch for, record it, and escalate."""

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

    def execute(self, context) -> dict:
        build = self.build(context)
        states = self._states(context)
        failed_gate, targets = targets_to_restore(self.plan, states)
        failed_tasks = sorted(t for t, s in states.items() if s == "failed")
        if failed_gate is None:
            self.say(
                f"Rollout of {build['name']} stopped at {escape_mrkdwn(', '.join(failed_tasks) or 'unknown')}; "
                "no gate failed, so nothing was rolled back. Fix the cause and clear the failed task to resume.",
                escalate=True,
            )
            return {"rolled_back": [], "failed_tasks": failed_tasks}
        newer = self.superseded_by(build["name"])
        if newer:
            self.say(f"Rollout of {build['name']} failed a gate but is superseded by {newer}: flag left alone",
                     escalate=True)
            return {"rolled_back": [], "superseded_by": newer}
        decision = self.pull_decision(context, gate_task_id(failed_gate))
        flags = flags_hook()
        restored = []
        for target in targets:
            stage = next(s for s in self.plan.stages if target in [t.target for t in s.targets])
            if flags.rule_value(target) != build["images"]:
                continue
            previous = self._previous(context, stage, target, build)
            if not previous:
                raise RuntimeError(f"no recorded previous image map for {target}: refusing to guess")
            flags.point_rule(target, previous,
                             comment=f"Rollback to previous version: gate {failed_gate.id} failed for {build['name']}")
            restored.append({"target": target, "restored": previous})
        reason = decision.get("reason", "see the task log")
        lines = [f"Gate {failed_gate.id} failed at {iso(utcnow())}: {reason}"]
        lines += [f"{r['target']} restored to the previous image map {r['restored']}" for r in restored]
        if not restored:
            lines.append("No target served the new image any more: nothing to restore")
        path = self.plan.evidence_path(build["name"])
        github = github_hook()
        sha = append_record(
            github, path, Record("Rollback", tuple(lines)),
            f"Record rollback of immutable image build {build['name']} after gate {failed_gate.id}",
            evidence_for(self.plan, context, build, ("dev", "prestage", "stage")),
        )
        self.say(
            f"ROLLBACK of immutable image build {build['name']}: gate {failed_gate.id} failed "
            f"({escape_mrkdwn(reason)}). Restored: {', '.join(r['target'] for r in restored) or 'none'}. "
            f"Evidence: {github.blob_url(path, sha)}. Nothing further is promoted.",
            escalate=True,
        )
        return {"failed_gate": failed_gate.id, "reason": reason, "rolled_back": restored, "evidence_sha": sha}

    def pull_decision(self, context, task_id: str | None) -> dict:
        if task_id is None:
            return {}
        return context["ti"].xcom_pull(task_ids=task_id, key="decision") or {}
