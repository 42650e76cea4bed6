"""Print a rollout's progress stage by stage, in runbook order, from polled task states.

Why: the grid shows it too, but ``make demo`` and the stack test run headless; one line per
finished TaskGroup (with elapsed time) and one per wait (deferred, awaiting a person) reads
like the runbook being worked through.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.harness.stack import TERMINAL_TI, WAITING_TI

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
    """Feed it ``{task key: state}`` snapshots; it prints each group once it is done, in order.

    :param started: ``time.monotonic()`` of the trigger; elapsed times count from it.
    :param detail: optional ``(task key, state) -> str`` adding context to a wait line.
    """

    def __init__(self, plan_name: str, started: float, *, out: Callable[[str], None] = print,
                 detail: Callable[[str, str], str] | None = None):
        self.stages = describe_stages(plan_name)
        self.started = started
        self.out = out
        self.detail = detail
        self.done: dict[str, float] = {}
        self.first_seen: dict[str, float] = {}
        self.waits_seen: set[tuple[str, str]] = set()

    def elapsed(self) -> str:
        return fmt_seconds(time.monotonic() - self.started)

    def update(self, states: dict[str, str | None]) -> None:
        now = time.monotonic()
        groups: dict[str, list[str | None]] = {}
        for key, state in states.items():
            group = key.split(".", 1)[0]
            groups.setdefault(group, []).append(state)
            if state is not None:
                self.first_seen.setdefault(group, now)
            if state in WAITING_TI and (key, state) not in self.waits_seen:
                self.waits_seen.add((key, state))
                what = "waiting for a person (Required actions)" if state == "awaiting_input" else \
                    "deferred: no worker slot"
                extra = self.detail(key, state) if self.detail else ""
                self.out(f"  [{self.elapsed():>6}]    ... {key} {what}{(' ' + extra) if extra else ''}")
        for group, text in self.stages:
            if group in self.done:
                continue
            members = groups.get(group)
            if not members or not all(s in TERMINAL_TI for s in members):
                break  # the runbook's order: nothing later is reported before this group
            self.done[group] = now
            if all(s == "success" for s in members):
                mark = "ok"
            elif any(s in ("failed", "upstream_failed") for s in members):
                mark = "FAILED"
            else:
                mark = "skipped" if all(s == "skipped" for s in members) else "ok"
            took = now - self.first_seen.get(group, now)
            self.out(f"  [{self.elapsed():>6}] {mark:>6} {group:<26} {text}  (took ~{fmt_seconds(took)})")

    @property
    def finished_groups(self) -> list[str]:
        return list(self.done)
