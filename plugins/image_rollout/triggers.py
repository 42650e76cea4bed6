"""Deferrable waits: the rollout's gates poll from the triggerer, so a day-long wait holds no worker slot.

Each trigger reads its system through the same hooks as the operators (run in a thread, so the
triggerer's event loop is never blocked), applies the pure decision from ``verdicts``, and fires
once the decision is final or the deadline passes.

Inconclusive is not failed. A gate trigger (``inconclusive_timeout`` set) whose data cannot be
read keeps polling instead of ending the wait: it fires ``inconclusive`` once (the operator
escalates and defers again with ``escalated=True``), ``recovered`` when the data can be read again
after that, and ``inconclusive_timeout`` when it stayed unreadable for ``inconclusive_timeout``
seconds (the operator asks a person). While the data is unreadable no deadline fires: a time limit
is judged on data, never on an outage. A permanent error (a malformed answer:
``AirflowFailException`` or a data-shape error) ends the wait with ``error``/``permanent``.
Without ``inconclusive_timeout`` (reports) any error ends the wait with ``error``; a change request
(``waits_out_errors``) keeps polling through transient errors until its deadline, since the board
may take a day and one 5xx burst must not end the approval that waits on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from image_rollout import lazy_module
from image_rollout.contracts import iso, parse_time, utcnow

verdicts = lazy_module("image_rollout.verdicts")

if TYPE_CHECKING:
    from image_rollout.hooks.chlorine import ChlorineHook
    from image_rollout.hooks.flags import FlagsHook
    from image_rollout.hooks.jenkins import JenkinsHook
    from image_rollout.hooks.pagerduty import PagerDutyHook

H = TypeVar("H")

_MODULE = "image_rollout.triggers"
PERMANENT_ERRORS = (AirflowFailException, ValueError, TypeError, KeyError)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def is_permanent(exc: BaseException) -> bool:
    """A malformed answer will not get better by asking again (H2's MalformedResponseError is an
    AirflowFailException); anything else (5xx after the hook's retries, refused connection) is transient."""
    return isinstance(exc, PERMANENT_ERRORS)


class _PollingTrigger(BaseTrigger):
    """Poll ``check()`` every ``poll`` seconds until it returns an event or ``deadline`` passes.

    Each subclass takes its own arguments explicitly and names every one in ``serialize()``: the
    triggerer rebuilds a trigger from those kwargs (also after a restart), so a key left out would
    come back as its default. The hooks a trigger reads through are built once per trigger run and
    reused by every poll; each poll looks their connections up afresh, as a new hook would.

    :param poll: seconds between two checks.
    :param deadline: ISO time after which a ``deadline`` event fires; None: no deadline.
    :param inconclusive_timeout: seconds of continuous unreadable data before
        ``inconclusive_timeout``; None: the first error ends the wait (``error``).
    :param unreadable_since: ISO time the data became unreadable (carried over a re-deferral).
    :param escalated: the operator has escalated this outage already: keep polling quietly.
    """

    def __init__(
        self,
        *,
        poll: float,
        deadline: str | None,
        inconclusive_timeout: float | None = None,
        unreadable_since: str | None = None,
        escalated: bool = False,
    ) -> None:
        super().__init__()
        self.poll = float(poll)
        self.deadline = deadline
        self.inconclusive_timeout = None if inconclusive_timeout is None else float(inconclusive_timeout)
        self.unreadable_since = unreadable_since
        self.escalated = bool(escalated)
        self._hooks: dict[type, Any] = {}

    def _hook(self, cls: type[H]) -> H:
        """This run's one instance of the hook class ``cls``: built at its first use, reused by every poll."""
        if cls not in self._hooks:
            self._hooks[cls] = cls()
        return self._hooks[cls]

    def _new_poll(self) -> None:
        """Each poll starts its hooks afresh (connection looked up again, as a hook built for each poll
        did): an edited connection counts from the next poll, not from the next deferral."""
        for hook in self._hooks.values():
            hook.reset()

    def _serialized(self, **own: Any) -> tuple[str, dict[str, Any]]:
        """The classpath and kwargs: the polling arguments every trigger has, then the subclass's ``own``."""
        return (
            f"{_MODULE}.{type(self).__name__}",
            {
                "poll": self.poll,
                "deadline": self.deadline,
                "inconclusive_timeout": self.inconclusive_timeout,
                "unreadable_since": self.unreadable_since,
                "escalated": self.escalated,
                **own,
            },
        )

    #: Keep polling through transient errors (until the deadline) instead of ending the wait with ``error``.
    waits_out_errors = False

    async def check(self, now: datetime) -> dict | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def interval(self) -> float:
        """Seconds to sleep before the next ``check``."""
        return self.poll

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = parse_time(self.deadline) if self.deadline else None
        unreadable = parse_time(self.unreadable_since) if self.unreadable_since else None
        while True:
            now = utcnow()
            self._new_poll()
            try:
                event = await self.check(now)
            except Exception as exc:
                if self.inconclusive_timeout is None and self.waits_out_errors and not is_permanent(exc) and (
                        deadline is None or now < deadline):
                    self.log.warning("%s: %s; polling again", type(self).__name__, _reason(exc))
                    await self._pause(now, deadline)
                    continue
                if self.inconclusive_timeout is None or is_permanent(exc):
                    yield TriggerEvent({"verdict": "error", "reason": _reason(exc), "permanent": is_permanent(exc)})
                    return
                unreadable = unreadable or now
                waited = (now - unreadable).total_seconds()
                info = {"reason": _reason(exc), "unreadable_since": iso(unreadable),
                        "unreadable_seconds": round(waited, 3)}
                if not self.escalated:
                    yield TriggerEvent({"verdict": "inconclusive", **info})
                    return
                if waited >= self.inconclusive_timeout:
                    yield TriggerEvent({"verdict": "inconclusive_timeout", **info})
                    return
                await asyncio.sleep(max(0.05, min(self.poll, self.inconclusive_timeout - waited)))
                continue
            if event is not None:
                yield TriggerEvent(event)
                return
            if self.escalated:
                # Readable again after an escalated outage: let the operator say so, then go on.
                yield TriggerEvent({"verdict": "recovered", "unreadable_since": self.unreadable_since})
                return
            if deadline is not None and now >= deadline:
                yield TriggerEvent({"verdict": "deadline", "reason": f"deadline {self.deadline} passed"})
                return
            await self._pause(now, deadline)

    async def _pause(self, now: datetime, deadline: datetime | None) -> None:
        """Sleep until the next ``check``, never past the deadline."""
        step = self.interval()
        left = (deadline - now).total_seconds() if deadline is not None else step
        await asyncio.sleep(max(0.05, min(step, left)))


class ChangeRequestTrigger(_PollingTrigger):
    """Wait until a change request (LaunchDarkly approval request) is approved or declined.

    :param request_id: the approval request's ``_id``.
    (The polling arguments: see :class:`_PollingTrigger`.)
    """

    waits_out_errors = True

    def __init__(
        self,
        *,
        request_id: str,
        poll: float,
        deadline: str | None,
        inconclusive_timeout: float | None = None,
        unreadable_since: str | None = None,
        escalated: bool = False,
    ) -> None:
        super().__init__(poll=poll, deadline=deadline, inconclusive_timeout=inconclusive_timeout,
                         unreadable_since=unreadable_since, escalated=escalated)
        self.request_id = request_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return self._serialized(request_id=self.request_id)

    @property
    def _flags(self) -> FlagsHook:
        from image_rollout.hooks.flags import FlagsHook

        return self._hook(FlagsHook)

    async def check(self, now: datetime) -> dict | None:
        request = await sync_to_async(self._flags.get_change_request)(self.request_id)
        review = request.get("reviewStatus")
        if review in ("approved", "declined") or request.get("status") == "completed":
            return {"verdict": review or "approved", "request": request}
        return None


class ReloadsTrigger(_PollingTrigger):
    """Count the carrier's reloads that booted the new image, until the gate decides.

    :param carrier: the carrier whose reloads count, e.g. ``dev-sjc04-carrier12``.
    :param image_id: the image id a counted reload must have booted.
    :param since: ISO time from which reloads count (the promotion).
    :param required: reloads that must have succeeded on the image.
    :param max_failed: failed reloads tolerated before the gate fails.
    (The polling arguments: see :class:`_PollingTrigger`.)
    """

    def __init__(
        self,
        *,
        carrier: str,
        image_id: str,
        since: str,
        required: int,
        max_failed: int,
        poll: float,
        deadline: str | None,
        inconclusive_timeout: float | None = None,
        unreadable_since: str | None = None,
        escalated: bool = False,
    ) -> None:
        super().__init__(poll=poll, deadline=deadline, inconclusive_timeout=inconclusive_timeout,
                         unreadable_since=unreadable_since, escalated=escalated)
        self.carrier = carrier
        self.image_id = image_id
        self.since = since
        self.required = required
        self.max_failed = max_failed

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return self._serialized(carrier=self.carrier, image_id=self.image_id, since=self.since,
                                required=self.required, max_failed=self.max_failed)

    @property
    def _chlorine(self) -> ChlorineHook:
        from image_rollout.hooks.chlorine import ChlorineHook

        return self._hook(ChlorineHook)

    async def check(self, now: datetime) -> dict | None:
        reloads = await sync_to_async(self._chlorine.list_reloads)(carrier=self.carrier, since=self.since)
        decision = verdicts.evaluate_reloads(
            reloads, image_id=self.image_id, required=self.required, max_failed=self.max_failed
        )
        if decision.verdict == "wait":
            return None
        return decision.as_event()


def read_canary(region: str, image_map: dict, floors: list, flags: FlagsHook | None = None) -> dict:
    """Read, from LaunchDarkly, whether ``region`` serves ``image_map`` now and since when.

    Returns ``{"serving": bool, "serves": map|None, "since": iso|None, "rule_id": str}``; ``since``
    is the latest of the region rule's applied change requests (``appliedDate``) and ``floors``.
    ``flags``: the hook to read through (a trigger passes its own, built once per run); default a new one.
    """
    from image_rollout.hooks.flags import FlagsHook, normalize_image_map

    if flags is None:
        flags = FlagsHook()
    flag = flags.get_flag()
    rules = flag["environments"][flags.environment_key]["rules"]
    rule = next((r for r in rules if flags.rule_target(r) == region), None)
    if rule is None:
        raise RuntimeError(f"LaunchDarkly has no rule for {region}")
    serves = flags.rule_value(region)
    serving = serves is not None and serves == normalize_image_map(image_map)
    since = verdicts.soak_since(flags.list_change_requests(), rule["_id"], floors) if serving else None
    return {"serving": serving, "serves": serves, "since": iso(since) if since else None, "rule_id": rule["_id"]}


class SoakTrigger(_PollingTrigger):
    """The canary soak: autorecovery reloads in the region and PagerDuty, until the gate decides.

    Each full read measures from the region's *latest* promotion as LaunchDarkly records it (and the
    ``floors`` the operator passes: this rollout's own promotion and rollback times), so reloads
    from before a rollback never count. If the region does not serve the build, it fires
    ``not_serving`` once (``holding=False``) and then keeps polling without a verdict: it never
    passes a canary that is not there.

    An incident must roll the canary back within a minute, but counting reloads can wait: the full
    read (LaunchDarkly, chlorine, PagerDuty) runs every ``poll`` seconds, and between two full reads
    only PagerDuty is asked, every ``incident_poll`` seconds (None: every ``poll``), since the last
    full read's promotion time. An incident seen there is never acted on alone: it triggers a full
    read at once, and the verdict comes from that (the systems of record, read afresh).

    :param region: the canary region (its LaunchDarkly rule), e.g. ``ap-south``.
    :param image_map: the build's image map the region must serve.
    :param image_id: the image id a counted autorecovery reload must have booted.
    :param min_duration: seconds the soak lasts at least.
    :param min_reloads: autorecovery reloads the soak needs at least.
    :param timeout: seconds after which the soak's time limit is reached.
    :param incident_title: the PagerDuty incident title that fails the soak.
    :param floors: ISO times the soak never counts from before (this rollout's promotion and rollbacks).
    :param holding: the operator holds the soak (the region does not serve the build): poll quietly.
    :param incident_poll: seconds between two PagerDuty-only reads; None: every read is full.
    (The polling arguments: see :class:`_PollingTrigger`.)
    """

    def __init__(
        self,
        *,
        region: str,
        image_map: dict[str, str],
        image_id: str,
        min_duration: float,
        min_reloads: int,
        timeout: float,
        incident_title: str,
        floors: list[str] | None = None,
        holding: bool = False,
        incident_poll: float | None = None,
        poll: float,
        deadline: str | None,
        inconclusive_timeout: float | None = None,
        unreadable_since: str | None = None,
        escalated: bool = False,
    ) -> None:
        super().__init__(poll=poll, deadline=deadline, inconclusive_timeout=inconclusive_timeout,
                         unreadable_since=unreadable_since, escalated=escalated)
        self.region = region
        self.image_map = image_map
        self.image_id = image_id
        self.min_duration = min_duration
        self.min_reloads = min_reloads
        self.timeout = timeout
        self.incident_title = incident_title
        self.floors = floors
        self.holding = holding
        self.incident_poll = incident_poll
        self._since: str | None = None  # the promotion time of the last full read that saw the build served
        self._full_at = 0.0  # time.monotonic() of that read

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return self._serialized(
            region=self.region, image_map=self.image_map, image_id=self.image_id,
            min_duration=self.min_duration, min_reloads=self.min_reloads, timeout=self.timeout,
            incident_title=self.incident_title, floors=self.floors, holding=self.holding,
            incident_poll=self.incident_poll,
        )

    @property
    def _flags(self) -> FlagsHook:
        from image_rollout.hooks.flags import FlagsHook

        return self._hook(FlagsHook)

    @property
    def _chlorine(self) -> ChlorineHook:
        from image_rollout.hooks.chlorine import ChlorineHook

        return self._hook(ChlorineHook)

    @property
    def _pagerduty(self) -> PagerDutyHook:
        from image_rollout.hooks.pagerduty import PagerDutyHook

        return self._hook(PagerDutyHook)

    def interval(self) -> float:
        quick = self.incident_poll
        if self._since is None or not quick:
            return self.poll
        return min(self.poll, float(quick))

    def _decide(self, now: datetime, since: str, reloads: list, incidents: list):
        return verdicts.evaluate_soak(
            reloads=reloads,
            incidents=incidents,
            image_id=self.image_id,
            started_at=parse_time(since),
            now=now,
            min_duration=self.min_duration,
            min_reloads=self.min_reloads,
            timeout=self.timeout,
            incident_title=self.incident_title,
        )

    async def check(self, now: datetime) -> dict | None:
        due = self.poll - self.interval() / 2  # a full read every poll, whatever the drift of the sleeps
        if self._since is not None and time.monotonic() - self._full_at < due:
            incidents = await sync_to_async(self._pagerduty.list_incidents)(
                since=self._since, title_contains=self.incident_title
            )
            if self._decide(now, self._since, [], incidents).verdict == "wait":
                return None
            # An incident (or the time limit): decide on a full read of every system, now.
        return await self._full_read(now)

    async def _full_read(self, now: datetime) -> dict | None:
        self._since = None
        canary = await sync_to_async(read_canary)(self.region, self.image_map, list(self.floors or []), self._flags)
        if not canary["serving"]:
            if self.holding:
                return None
            return {"verdict": "not_serving", "reason": f"{self.region} does not serve the build",
                    "serves": canary["serves"]}
        if canary["since"] is None:
            raise AirflowFailException(f"no promotion time for {self.region} in LaunchDarkly or XCom")
        since = canary["since"]
        reloads = await sync_to_async(self._chlorine.list_reloads)(
            region=self.region, since=since, kind="autorecovery"
        )
        incidents = await sync_to_async(self._pagerduty.list_incidents)(
            since=since, title_contains=self.incident_title
        )
        decision = self._decide(now, since, reloads, incidents)
        if decision.verdict == "wait":
            if self.holding:
                # Serving again after a hold: tell the operator, which starts counting afresh.
                return {"verdict": "serving", "since": since}
            self._since, self._full_at = since, time.monotonic()
            return None
        return {**decision.as_event(), "since": since, "decided_at": iso(now)}


class ReportBuildTrigger(_PollingTrigger):
    """Wait for a new build of the reportCarrierWorkerIaasImageCounts job.

    :param job: the Jenkins job path of the report.
    :param after_number: the build number already read: a newer successful build fires.
    (The polling arguments: see :class:`_PollingTrigger`.)
    """

    def __init__(
        self,
        *,
        job: str,
        after_number: int,
        poll: float,
        deadline: str | None,
        inconclusive_timeout: float | None = None,
        unreadable_since: str | None = None,
        escalated: bool = False,
    ) -> None:
        super().__init__(poll=poll, deadline=deadline, inconclusive_timeout=inconclusive_timeout,
                         unreadable_since=unreadable_since, escalated=escalated)
        self.job = job
        self.after_number = after_number

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return self._serialized(job=self.job, after_number=self.after_number)

    @property
    def _jenkins(self) -> JenkinsHook:
        from image_rollout.hooks.jenkins import JenkinsHook

        return self._hook(JenkinsHook)

    async def check(self, now: datetime) -> dict | None:
        build = await sync_to_async(self._jenkins.get_build)(self.job, "lastSuccessfulBuild")
        if int(build["number"]) > int(self.after_number):
            return {"verdict": "new_report", "number": int(build["number"])}
        return None
