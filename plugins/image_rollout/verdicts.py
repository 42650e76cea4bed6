"""The runbook's gates as pure decisions over data read from chlorine, PagerDuty and Jenkins.

Kept free of I/O so every edge case (9 reloads, an alert one second before the soak
ends, reloads that booted the old image) is a plain unit test. A gate never passes by
default: missing data is the caller's error, not a pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from image_rollout.contracts import from_ms, parse_time

Verdict = Literal["pass", "fail", "wait"]


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    figures: dict = field(default_factory=dict)

    def as_event(self) -> dict:
        return {"verdict": self.verdict, "reason": self.reason, "figures": self.figures}


def _require(item: Mapping, keys: Iterable[str], what: str) -> None:
    missing = [k for k in keys if k not in item]
    if missing:
        raise ValueError(f"{what} is missing {missing}: {dict(item)!r}"[:300])


def evaluate_reloads(
    reloads: Iterable[Mapping], *, image_id: str, required: int, max_failed: int
) -> Decision:
    """Runbook: "Three worker nodes ... must be reloaded successfully with the new image".

    Only reloads that booted ``image_id`` count, one per worker (a worker reloaded twice is
    one machine). A reload that failed with the new image is a failed gate once more than
    ``max_failed`` of them happened.
    """
    good: dict[str, Mapping] = {}
    failed: list[Mapping] = []
    old_image = 0
    for r in reloads:
        _require(r, ("worker", "status", "image_id", "change_id"), "chlorine reload")
        if str(r["image_id"]) != str(image_id):
            old_image += 1
            continue
        if r["status"] == "succeeded":
            good.setdefault(r["worker"], r)
        elif r["status"] == "failed":
            failed.append(r)
    counted = list(good.values())[:required]
    figures = {
        "succeeded_with_new_image": len(good),
        "failed_with_new_image": len(failed),
        "other_image": old_image,
        "required": required,
        "reloads": [{"worker": r["worker"], "change_id": r["change_id"]} for r in counted],
    }
    if len(failed) > max_failed:
        workers = ", ".join(sorted({f["worker"] for f in failed}))
        return Decision("fail", f"{len(failed)} reload(s) failed with image {image_id}: {workers}", figures)
    if len(good) >= required:
        return Decision("pass", f"{len(good)} workers reloaded with image {image_id}", figures)
    return Decision("wait", f"{len(good)}/{required} workers reloaded with image {image_id}", figures)


def evaluate_soak(
    *,
    reloads: Iterable[Mapping],
    incidents: Iterable[Mapping],
    image_id: str,
    started_at: datetime,
    now: datetime,
    min_duration: float,
    min_reloads: int,
    timeout: float,
    incident_title: str,
) -> Decision:
    """Runbook canary soak: >= ``min_reloads`` autorecovery reloads with the new image, at least
    ``min_duration`` seconds elapsed, and no ``autorecovery_failed`` incident since the promotion.

    An incident fails the gate at once, even one second before the soak would have passed.
    """
    elapsed = (now - started_at).total_seconds()
    alerts = []
    for inc in incidents:
        _require(inc, ("title", "created_at"), "PagerDuty incident")
        if incident_title in inc["title"] and parse_time(inc["created_at"]) >= started_at:
            alerts.append(inc)
    succeeded = 0
    failed = 0
    for r in reloads:
        _require(r, ("status", "image_id"), "chlorine reload")
        if str(r["image_id"]) != str(image_id):
            continue
        if r["status"] == "succeeded":
            succeeded += 1
        elif r["status"] == "failed":
            failed += 1
    figures = {
        "autorecovery_reloads": succeeded,
        "failed_reloads": failed,
        "required_reloads": min_reloads,
        "incidents": [i.get("id") or i["title"] for i in alerts],
        "elapsed_seconds": round(elapsed, 3),
        "min_seconds": min_duration,
        "seconds_left": round(max(0.0, min_duration - elapsed), 3),
    }
    if alerts:
        titles = "; ".join(re.sub(r"\s+", " ", a["title"])[:120] for a in alerts[:3])
        return Decision("fail", f"{len(alerts)} {incident_title} incident(s) during the soak: {titles}", figures)
    if elapsed >= min_duration and succeeded >= min_reloads:
        return Decision("pass", f"{succeeded} autorecovery reloads with image {image_id}, no incident", figures)
    if elapsed >= timeout:
        return Decision(
            "fail",
            f"soak timed out after {elapsed:.0f}s with {succeeded}/{min_reloads} autorecovery reloads",
            figures,
        )
    return Decision("wait", f"{succeeded}/{min_reloads} reloads, {figures['seconds_left']}s of soak left", figures)


def _applied_at(request: Mapping) -> datetime | None:
    return from_ms(request.get("appliedDate"))


def latest_rule_change(change_requests: Iterable[Mapping], rule_id: str) -> datetime | None:
    """When LaunchDarkly last applied a change request that points ``rule_id`` anywhere: its ``appliedDate``.

    Any applied request touching the rule counts, whoever filed it: the soak measures from the
    rule's latest change, never from a time this rollout cached earlier.
    """
    latest = None
    for request in change_requests:
        applied = _applied_at(request)
        if applied is None:
            continue
        instructions = request.get("instructions") or []
        if any(isinstance(i, Mapping) and i.get("ruleId") == rule_id for i in instructions):
            latest = applied if latest is None or applied > latest else latest
    return latest


def soak_since(
    change_requests: Iterable[Mapping], rule_id: str, floors: Iterable[str | datetime | None] = ()
) -> datetime | None:
    """The time the canary soak measures from: the latest of LaunchDarkly's ``appliedDate`` for the
    region's rule and the ``floors`` (changes this rollout recorded itself: its promotion, a rollback's
    direct write). None when nothing is known: the caller must not start a soak then."""
    times = [parse_time(f) for f in floors if f]
    applied = latest_rule_change(change_requests, rule_id)
    if applied is not None:
        times.append(applied)
    return max(times) if times else None


def build_key(build_name: str) -> tuple[int, ...]:
    """Order builds: newer date first, then the smith version numbers (``532-1250-879-20210818``)."""
    parts = [int(p) for p in build_name.split("-")]
    return (parts[-1], *parts[:-1])


def is_newer(candidate: str, than: str) -> bool:
    return build_key(candidate) > build_key(than)
