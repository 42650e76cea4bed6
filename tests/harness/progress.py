"""Print a rollout's progress stage by stage, in runbook order, from polled task states.

Why: the grid shows it too, but ``make demo`` and the stack test run headless; one line per
finished TaskGroup (with elapsed time) and one per wait (deferred, awaiting a person) reads
like the runbook being worked through.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.harness.stack import TERMINAL_TI, WAITING_TI, state_str

FIRST_GROUP = "build_verification"
LAST_GROUP = "rollout_end"


def fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def describe_stages(plan_name: str) -> list[tuple[str, str]]:
    """(group id, what it does) for every TaskGroup of the rollout, in runbook order."""
    from image_rollout.plan import load_plan

    plan = load_plan(plan_name)
    out = [(FIRST_GROUP, "Jenkins immutable_image build verified, image ids captured")]
    for stage in plan.stages:
        targets = ", ".join(t.target for t in stage.targets)
        if stage.kind == "promote":
            text = f"promote {targets}" + (" (change request)" if stage.change_request else "")
            if stage.human_approval:
                text += ", approved by a person"
            if stage.carrier:
                text += f"; {plan.reloads.required} reloads with the new image on {stage.carrier}"
        elif stage.kind == "evidence_commit":
            text = "evidence file committed"
        elif stage.kind == "evidence_update":
            text = "evidence updated with the stage reloads"
        elif stage.kind == "bake":
            text = f"bake {fmt_seconds(stage.wait)} after the {stage.after} promotion (deferred)"
        elif stage.kind == "soak_gate":
            text = (f"canary soak in {plan.soak.region}: >={plan.soak.min_autorecovery_reloads} autorecovery "
                    f"reloads, >={fmt_seconds(plan.soak.min_duration)}, no {plan.soak.incident_title} incident")
        elif stage.kind == "adoption":
            text = f"adoption monitored until {plan.adoption.threshold_percent:g}% run the new image"
        else:
            text = stage.kind
        out.append((stage.id, text))
    out.append((LAST_GROUP, "flag state verified across every target"))
    return out


class Progress:
    """Feed it task-instance snapshots; it prints each group once it is done, in runbook order, and each wait.

    :param started: ``time.monotonic()`` of the trigger; elapsed times count from it.
    :param detail: optional ``(task id, state) -> str`` adding context to a wait line.
    """

    def __init__(self, plan_name: str, started: float, *, out: Callable[[str], None] = print,
                 detail: Callable[[str, str], str] | None = None):
        self.stages = describe_stages(plan_name)
        self.started = started
        self.out = out
        self.detail = detail
        self.done: dict[str, float] = {}
        self.waits_seen: set[tuple[str, str]] = set()

    def elapsed(self) -> str:
        return fmt_seconds(time.monotonic() - self.started)

    def update(self, tis: list) -> None:
        """One snapshot of the run's task instances (client objects: task_id, map_index, state, dates)."""
        groups: dict[str, list] = {}
        for ti in tis:
            groups.setdefault(ti.task_id.split(".", 1)[0], []).append(ti)
        for group, text in self.stages:
            if group in self.done:
                continue
            members = groups.get(group)
            states = [state_str(ti.state) for ti in members or []]
            if not members or not all(s in TERMINAL_TI for s in states):
                break  # the runbook's order: nothing later is reported before this group
            self.done[group] = time.monotonic()
            if any(s in ("failed", "upstream_failed") for s in states):
                mark = "FAILED"
            elif all(s == "skipped" for s in states):
                mark = "skipped"
            else:
                mark = "ok"
            ran = [ti for ti in members if ti.start_date and ti.end_date and state_str(ti.state) != "skipped"]
            took = (max(ti.end_date for ti in ran) - min(ti.start_date for ti in ran)).total_seconds() if ran else 0
            self.out(f"  [{self.elapsed():>6}] {mark:>7} {group:<24} {text}  (took {fmt_seconds(took)})")
        waiting: dict[tuple[str, str], int] = {}
        for ti in tis:
            state = state_str(ti.state)
            if state in WAITING_TI:
                waiting[(ti.task_id, state)] = waiting.get((ti.task_id, state), 0) + 1
        for (task_id, state), count in waiting.items():
            if (task_id, state) in self.waits_seen:
                continue
            self.waits_seen.add((task_id, state))
            what = "waits for a person (Required actions)" if state == "awaiting_input" else \
                "deferred (no worker slot)"
            extra = self.detail(task_id, state) if self.detail else ""
            many = f" x{count}" if count > 1 else ""
            self.out(f"  [{self.elapsed():>6}]     ... {task_id}{many} {what}{(' ' + extra) if extra else ''}")

    @property
    def finished_groups(self) -> list[str]:
        return list(self.done)
