"""Backout on demand: which targets to restore, to what, and what to refuse (issue 11 item 2).

The runbook's backout plan is "Rollback to previous version". Pure decisions, no I/O: the
operators read LaunchDarkly, GitHub and the rollout's own records, then ask these functions
what the backout does. Anything that would make the backout guess (an unknown target, a build
that was never verified, no record of what a target served before) is refused here, with an
error naming the problem, before anything is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from image_rollout import lazy_module
from image_rollout.contracts import IMAGE_KEYS
from image_rollout.inputs import is_build_name, is_image_id

pc = lazy_module("image_rollout.preconditions")

ALL = "all"


class BackoutRefused(ValueError):
    """The backout cannot go ahead as asked: nothing was written."""


def _map(value: Any) -> dict | None:
    return dict(value) if isinstance(value, Mapping) else None


def describe(image_map: Mapping | None, names: Mapping[str, str] | None = None) -> str:
    """A map as a person reads it: its build's name when the flag's variation names it, else its ids."""
    if image_map is None:
        return "a percentage rollout"
    name = (names or {}).get(map_key(image_map))
    ids = " ".join(f"{k}={image_map[k]}" for k in sorted(image_map))
    return f"build {name} ({ids})" if name else f"({ids})"


def map_key(image_map: Mapping) -> str:
    """A hashable key of an image map (for ``{map: build name}`` lookups)."""
    return json.dumps({k: str(v) for k, v in image_map.items()}, sort_keys=True)


def build_names(variations: Iterable[Mapping]) -> dict[str, str]:
    """``{map_key: build name}`` from the flag's variations whose name is a build name."""
    out = {}
    for variation in variations:
        value, name = variation.get("value"), variation.get("name")
        if isinstance(value, Mapping) and is_build_name(name):
            out[map_key(value)] = name
    return out


def resolve_targets(requested: Any, known: Iterable[str]) -> list[str]:
    """``"all"`` or a list of target names: the plan's targets, in plan order; anything else refused."""
    known = list(known)
    if requested == ALL or requested is None:
        return known
    if isinstance(requested, str):
        requested = [requested]
    if not isinstance(requested, list) or not requested or not all(isinstance(t, str) for t in requested):
        raise BackoutRefused(f"targets must be \"all\" or a non-empty list of target names, not {requested!r}")
    unknown = [t for t in requested if t not in known]
    if unknown:
        raise BackoutRefused(f"unknown target(s) {unknown}: the plan's targets are {known}")
    return [t for t in known if t in requested]


def check_reason(reason: Any) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise BackoutRefused("reason is required: say why the build is backed out")
    return " ".join(reason.split())


_IMAGE_IDS = re.compile(r"SoftLayer armada-worker image IDs:\s*```\s*(\{.*?\})\s*```", re.S)


def image_ids_from_evidence(text: str | None) -> dict | None:
    """The build's image map as its evidence file states it (the runbook's ``image IDs`` block)."""
    found = _IMAGE_IDS.search(text or "")
    if not found:
        return None
    try:
        images = json.loads(found.group(1))
    except ValueError:
        return None
    if not isinstance(images, dict) or set(images) != set(IMAGE_KEYS):
        return None
    if not all(is_image_id(v) and isinstance(v, str) for v in images.values()):
        return None
    return dict(sorted(images.items()))


def before_rollout(records: Iterable[Mapping], targets: Iterable[str]) -> dict[str, dict | None]:
    """What each target served before the rollout, from the rollout runs' records of this build.

    ``records`` are one per rollout run: ``{"baseline": {target: map}, "promotions": [{"target",
    "previous", "promoted_at"}]}``. A promotion's ``previous`` (read from LaunchDarkly just before its
    write) wins over the verification snapshot; of several runs, the latest promotion counts.
    """
    out: dict[str, dict | None] = {}
    for target in targets:
        promoted = [p for r in records for p in r.get("promotions") or []
                    if p.get("target") == target and _map(p.get("previous"))]
        if promoted:
            latest = max(promoted, key=lambda p: str(p.get("promoted_at") or ""))
            out[target] = _map(latest["previous"])
            continue
        baselines = [_map((r.get("baseline") or {}).get(target)) for r in records]
        out[target] = next((b for b in baselines if b), None)
    return out


def decide(targets: Iterable[str], *, build_name: str, build_map: Mapping, current: Mapping[str, Any],
           before: Mapping[str, Any], to_map: Mapping | None, names: Mapping[str, str]) -> list[dict]:
    """For each target: restore it (to ``to_map``, or what it served before the rollout), or leave it, and why.

    Only a rule serving THIS build's map is restored: anything else (a newer build, a person's change,
    the map already restored) is left alone and named. A target that must be restored but has no record
    of what it served before, and no ``to_build``, refuses the whole backout.
    """
    decisions, missing = [], []
    for target in targets:
        now = _map(current.get(target))
        to = _map(to_map) if to_map is not None else _map(before.get(target))
        if now != dict(build_map):
            why = ("it already serves " + describe(now, names) if now is not None and now == to
                   else f"it serves {describe(now, names)}, not build {build_name}: not ours to change")
            decisions.append({"target": target, "action": "left", "why": why, "now": now})
        elif to is None:
            missing.append(target)
        elif to == dict(build_map):
            decisions.append({"target": target, "action": "left", "now": now,
                              "why": f"it served build {build_name} before the rollout: nothing to restore"})
        elif pc.check_image_map(to, to) is not None:
            raise BackoutRefused(f"the map to restore {target} to is not a whole image map: "
                                 f"{pc.check_image_map(to, to).reason}")
        else:
            decisions.append({"target": target, "action": "restore", "now": now, "to": to,
                              "to_build": names.get(map_key(to)),
                              "why": f"it serves build {build_name}; restored to {describe(to, names)}"})
    if missing:
        raise BackoutRefused(f"no record of what {missing} served before the rollout of {build_name}: "
                             "give to_build")
    return decisions


def prod_targets(plan) -> list[str]:
    """Targets whose change needs the prod start decision: the canary's stage and every stage after it."""
    out, prod = [], False
    for stage in plan.stages:
        prod = prod or stage.human_approval
        if prod:
            out += [t.target for t in stage.targets]
    return out


def train_targets(plan, *, approvals_required: bool) -> list[str]:
    """Targets restored through a change request: those the rollout promotes by one (stage, prod), or
    every target when LaunchDarkly requires approvals."""
    return [t.target for s in plan.stages for t in s.targets if approvals_required or s.change_request]


def route(decisions: list[dict], plan, *, approvals_required: bool) -> list[dict]:
    """Say for each restore how it is written: ``flag`` (direct) or ``change request``, and whether the
    prod start decision is needed."""
    trains, prod = set(train_targets(plan, approvals_required=approvals_required)), set(prod_targets(plan))
    out = []
    for d in decisions:
        d = dict(d)
        if d["action"] == "restore":
            d["via"] = "change request" if d["target"] in trains else "flag"
            d["start_decision"] = d["target"] in prod
        out.append(d)
    return out


def plan_text(build_name: str, decisions: list[dict], *, reason: str, names: Mapping[str, str],
              dry_run: bool) -> str:
    """The backout plan as a person reads it (task log, Slack)."""
    head = f"{'DRY RUN: ' if dry_run else ''}Backout of immutable image build {build_name} ({reason})"
    lines = [head]
    for d in decisions:
        if d["action"] == "restore":
            how = d.get("via", "flag") + (", prod start decision" if d.get("start_decision") else "")
            lines.append(f"- {d['target']}: restore to {describe(d['to'], names)} via {how}")
        else:
            lines.append(f"- {d['target']}: left alone: {d['why']}")
    return "\n".join(lines)
