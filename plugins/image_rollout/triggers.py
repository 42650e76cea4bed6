"""Deferrable waits: the rollout's gates poll from the triggerer, so a day-long wait holds no worker slot.

Each trigger reads its system through the same hooks as the operators (run in a thread, so the
triggerer's event loop is never blocked), applies the pure decision from ``gates``, and fires
once the decision is final or the deadline passes. An API that stays down after the hook's
retries ends the wait with an ``error`` event: the operator then fails closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from image_rollout import gates

_MODULE = "image_rollout.triggers"


def _now() -> datetime:
    return datetime.now(UTC)


class _PollingTrigger(BaseTrigger):
    """Poll ``check()`` every ``poll`` seconds until it returns an event or ``deadline`` passes."""

    def __init__(self, *, poll: float, deadline: str, **kwargs: Any) -> None:
        super().__init__()
        self.poll = float(poll)
        self.deadline = deadline
        self.kwargs = kwargs

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{_MODULE}.{type(self).__name__}",
            {"poll": self.poll, "deadline": self.deadline, **self.kwargs},
        )

    async def check(self, now: datetime) -> dict | None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = gates.parse_time(self.deadline)
        while True:
            now = _now()
            try:
                event = await self.check(now)
            except Exception as exc:  # fail closed: the operator turns this into a failed task
                yield TriggerEvent({"verdict": "error", "reason": f"{type(exc).__name__}: {exc}"[:500]})
                return
            if event is not None:
                yield TriggerEvent(event)
                return
            if now >= deadline:
                yield TriggerEvent({"verdict": "deadline", "reason": f"deadline {self.deadline} passed"})
                return
            await asyncio.sleep(max(0.05, min(self.poll, (deadline - now).total_seconds())))


class ChangeRequestTrigger(_PollingTrigger):
    """Wait until a change request (LaunchDarkly approval request) is approved or declined."""

    async def check(self, now: datetime) -> dict | None:
        from image_rollout.hooks.flags import FlagsHook

        request = await sync_to_async(FlagsHook().get_change_request)(self.kwargs["request_id"])
        review = request.get("reviewStatus")
        if review in ("approved", "declined") or request.get("status") == "completed":
            return {"verdict": review or "approved", "request": request}
        return None


class ReloadsTrigger(_PollingTrigger):
    """Count the carrier's reloads that booted the new image, until the gate decides."""

    async def check(self, now: datetime) -> dict | None:
        from image_rollout.hooks.chlorine import ChlorineHook

        k = self.kwargs
        reloads = await sync_to_async(ChlorineHook().list_reloads)(carrier=k["carrier"], since=k["since"])
        decision = gates.evaluate_reloads(
            reloads, image_id=k["image_id"], required=k["required"], max_failed=k["max_failed"]
        )
        if decision.verdict == "wait":
            return None
        return decision.as_event()


class SoakTrigger(_PollingTrigger):
    """The canary soak: autorecovery reloads in the region and PagerDuty, until the gate decides."""

    async def check(self, now: datetime) -> dict | None:
        from image_rollout.hooks.chlorine import ChlorineHook
        from image_rollout.hooks.pagerduty import PagerDutyHook

        k = self.kwargs
        reloads = await sync_to_async(ChlorineHook().list_reloads)(
            region=k["region"], since=k["started_at"], kind="autorecovery"
        )
        incidents = await sync_to_async(PagerDutyHook().list_incidents)(
            since=k["started_at"], title_contains=k["incident_title"]
        )
        decision = gates.evaluate_soak(
            reloads=reloads,
            incidents=incidents,
            image_id=k["image_id"],
            started_at=gates.parse_time(k["started_at"]),
            now=now,
            min_duration=k["min_duration"],
            min_reloads=k["min_reloads"],
            timeout=k["timeout"],
            incident_title=k["incident_title"],
        )
        if decision.verdict == "wait":
            return None
        return decision.as_event()


class ReportBuildTrigger(_PollingTrigger):
    """Wait for a new build of the reportCarrierWorkerIaasImageCounts job."""

    async def check(self, now: datetime) -> dict | None:
        from image_rollout.hooks.jenkins import JenkinsHook

        build = await sync_to_async(JenkinsHook().get_build)(self.kwargs["job"], "lastSuccessfulBuild")
        if int(build["number"]) > int(self.kwargs["after_number"]):
            return {"verdict": "new_report", "number": int(build["number"])}
        return None
