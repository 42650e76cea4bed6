"""The gate triggers: serialisation round trip, and run() driven with mocked hooks.

Inconclusive is not failed: an unreadable system yields ``inconclusive`` once, then the trigger
keeps polling (no deadline fires during an outage) until ``recovered`` or ``inconclusive_timeout``.
"""

from __future__ import annotations

import asyncio
import importlib
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from airflow.sdk.exceptions import AirflowFailException

from image_rollout import triggers
from image_rollout.hooks._http import ExternalSystemError
from image_rollout.hooks.flags import FlagsHook
from image_rollout.triggers import (
    ChangeRequestTrigger,
    ReloadsTrigger,
    ReportBuildTrigger,
    SoakTrigger,
    read_canary,
)

NEW = {"dev": "1", "prod": "8935154", "prodfr2": "3", "stage": "4"}
OLD = {"dev": "9", "prod": "8496814", "prodfr2": "7", "stage": "6"}


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


NOW = datetime.now(UTC)
FAR = _iso(NOW + timedelta(days=1))
PAST = _iso(NOW - timedelta(seconds=1))


@pytest.fixture(autouse=True)
def _fresh_clock():
    """The soak's time limit runs from ``since``: take "now" when each test runs, not when the module was
    imported (a loaded machine or a long suite can run a test minutes later)."""
    global NOW, FAR, PAST
    NOW = datetime.now(UTC)
    FAR = _iso(NOW + timedelta(days=1))
    PAST = _iso(NOW - timedelta(seconds=1))


def outage(system: str = "pagerduty") -> ExternalSystemError:
    return ExternalSystemError(system=system, call="GET /incidents", status=503, reason="503 after 3 retries")


def first_event(trigger, timeout: float = 5.0) -> dict | None:
    """The trigger's first event, or None if it yields nothing within ``timeout`` (it keeps polling)."""

    async def go():
        async for event in trigger.run():
            return event.payload
        return None

    async def bounded():
        try:
            return await asyncio.wait_for(go(), timeout)
        except TimeoutError:
            return None

    return asyncio.run(bounded())


def reloads_trigger(**kw) -> ReloadsTrigger:
    base = dict(poll=0.05, deadline=FAR, carrier="dev-sjc04-carrier12", image_id="1", since=PAST, required=3,
                max_failed=0, inconclusive_timeout=120.0)
    return ReloadsTrigger(**{**base, **kw})


def soak_trigger(**kw) -> SoakTrigger:
    base = dict(poll=0.05, deadline=None, region="ap-south", image_map=NEW, image_id=NEW["prod"], floors=[],
                min_duration=0.0, min_reloads=2, timeout=60.0, incident_title="autorecovery_failed", holding=False,
                inconclusive_timeout=120.0)
    return SoakTrigger(**{**base, **kw})


# -- serialisation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("trigger", [
    reloads_trigger(unreadable_since=PAST, escalated=True),
    soak_trigger(floors=[PAST], holding=True, incident_poll=0.01),
    ChangeRequestTrigger(poll=1.0, deadline=FAR, request_id="cr-1"),
    ReportBuildTrigger(poll=1.0, deadline=FAR, job="j", after_number=3),
])
def test_serialize_round_trip(trigger):
    path, kwargs = trigger.serialize()
    module, name = path.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (path, kwargs)
    assert type(rebuilt) is type(trigger)
    assert kwargs["inconclusive_timeout"] == trigger.inconclusive_timeout


# -- reloads ----------------------------------------------------------------------------------------------
def _chlorine(*answers):
    hook = mock.Mock()
    hook.list_reloads.side_effect = list(answers)
    return mock.patch("image_rollout.hooks.chlorine.ChlorineHook", return_value=hook)


def good(n, image="1"):
    return [{"worker": f"w{i}", "status": "succeeded", "image_id": image, "change_id": f"CHG{i}"} for i in range(n)]


def test_an_unreadable_system_is_inconclusive_not_an_error():
    with _chlorine(outage("chlorine")):
        event = first_event(reloads_trigger())
    assert event["verdict"] == "inconclusive"
    assert "503" in event["reason"] and event["unreadable_since"]


def test_after_escalation_it_keeps_polling_through_the_outage_and_past_the_deadline():
    # Deadline long passed, data unreadable: no deadline verdict, no failure; polls until the timeout.
    with _chlorine(*[outage("chlorine")] * 1000):
        event = first_event(reloads_trigger(deadline=PAST, escalated=True, unreadable_since=_iso(datetime.now(UTC)),
                                            inconclusive_timeout=0.4), timeout=0.2)
    assert event is None


def test_unreadable_for_the_whole_timeout_asks():
    since = _iso(datetime.now(UTC) - timedelta(seconds=30))
    with _chlorine(outage("chlorine")):
        event = first_event(reloads_trigger(escalated=True, unreadable_since=since, inconclusive_timeout=20))
    assert event["verdict"] == "inconclusive_timeout"
    assert event["unreadable_since"] == since and event["unreadable_seconds"] >= 30


def test_readable_again_after_an_escalation_recovers():
    with _chlorine(outage("chlorine"), outage("chlorine"), good(1)):
        event = first_event(reloads_trigger(escalated=True, unreadable_since=_iso(datetime.now(UTC))))
    assert event["verdict"] == "recovered"


def test_a_verdict_after_an_outage_is_the_verdict():
    with _chlorine(outage("chlorine"), good(3)):
        event = first_event(reloads_trigger(escalated=True, unreadable_since=_iso(datetime.now(UTC))))
    assert event["verdict"] == "pass"


def test_failed_reloads_still_fail_at_once():
    failed = [{"worker": "w9", "status": "failed", "image_id": "1", "change_id": "CHG9"}]
    with _chlorine(failed):
        event = first_event(reloads_trigger())
    assert event["verdict"] == "fail"


@pytest.mark.parametrize("exc", [AirflowFailException("malformed response"), ValueError("chlorine reload is missing")])
def test_a_malformed_answer_is_a_permanent_error(exc):
    with _chlorine(exc):
        event = first_event(reloads_trigger())
    assert event == {"verdict": "error", "reason": mock.ANY, "permanent": True}


def test_without_an_inconclusive_timeout_an_error_ends_the_wait():
    hook = mock.Mock()
    hook.get_build.side_effect = outage("jenkins")
    with mock.patch("image_rollout.hooks.jenkins.JenkinsHook", return_value=hook):
        event = first_event(ReportBuildTrigger(poll=0.05, deadline=FAR, job="report", after_number=1))
    assert event["verdict"] == "error" and event["permanent"] is False


def test_the_board_wait_polls_through_a_launchdarkly_outage():
    """The approval task that waits on the board is not retried: a 5xx burst must not end it."""
    hook = mock.Mock()
    approved = {"_id": "cr-1", "reviewStatus": "approved", "status": "pending"}
    hook.get_change_request.side_effect = [outage("launchdarkly"), outage("launchdarkly"), approved]
    with mock.patch("image_rollout.hooks.flags.FlagsHook", return_value=hook):
        event = first_event(ChangeRequestTrigger(poll=0.05, deadline=FAR, request_id="cr-1"))
    assert event == {"verdict": "approved", "request": approved}
    assert hook.get_change_request.call_count == 3


def test_the_board_wait_ends_at_its_deadline_during_an_outage():
    hook = mock.Mock()
    hook.get_change_request.side_effect = outage("launchdarkly")
    soon = _iso(datetime.now(UTC) + timedelta(seconds=0.3))
    with mock.patch("image_rollout.hooks.flags.FlagsHook", return_value=hook):
        event = first_event(ChangeRequestTrigger(poll=0.05, deadline=soon, request_id="cr-1"))
    assert event["verdict"] == "error" and event["permanent"] is False
    assert hook.get_change_request.call_count > 1


def test_a_malformed_change_request_still_ends_the_board_wait():
    hook = mock.Mock()
    hook.get_change_request.side_effect = AirflowFailException("malformed response")
    with mock.patch("image_rollout.hooks.flags.FlagsHook", return_value=hook):
        event = first_event(ChangeRequestTrigger(poll=0.05, deadline=FAR, request_id="cr-1"))
    assert event["verdict"] == "error" and event["permanent"] is True


def test_each_trigger_run_builds_its_hook_once_and_reuses_it_on_every_poll():
    with _chlorine(outage("chlorine"), outage("chlorine"), good(3)) as chlorine_hook:
        event = first_event(reloads_trigger(escalated=True, unreadable_since=_iso(datetime.now(UTC))))
    assert event["verdict"] == "pass"
    assert chlorine_hook.call_count == 1 and chlorine_hook.return_value.list_reloads.call_count == 3
    # ... and every later poll starts it afresh (its connection looked up again), as a new hook did.
    assert chlorine_hook.return_value.reset.call_count == 2

    hook = mock.Mock()
    hook.get_change_request.side_effect = [{"_id": "cr-1", "reviewStatus": "pending"}] * 2 + [
        {"_id": "cr-1", "reviewStatus": "approved"}]
    with mock.patch("image_rollout.hooks.flags.FlagsHook", return_value=hook) as flags_hook:
        assert first_event(ChangeRequestTrigger(poll=0.05, deadline=FAR, request_id="cr-1"))["verdict"] == "approved"
    assert flags_hook.call_count == 1 and hook.get_change_request.call_count == 3

    hook = mock.Mock()
    hook.get_build.side_effect = [{"number": 1}, {"number": 1}, {"number": 2}]
    with mock.patch("image_rollout.hooks.jenkins.JenkinsHook", return_value=hook) as jenkins_hook:
        event = first_event(ReportBuildTrigger(poll=0.05, deadline=FAR, job="report", after_number=1))
    assert event == {"verdict": "new_report", "number": 2}
    assert jenkins_hook.call_count == 1 and hook.get_build.call_count == 3


def test_the_deadline_still_fires_on_readable_data():
    with _chlorine(good(1)):
        event = first_event(reloads_trigger(deadline=PAST))
    assert event["verdict"] == "deadline"


# -- the canary soak ------------------------------------------------------------------------------------
def canary(serving=True, since=None):
    return {"serving": serving, "serves": NEW if serving else OLD, "since": since or PAST, "rule_id": "r-ap-south"}


def _soak(canaries, reloads=(), incidents=()):
    chlorine, pagerduty = mock.Mock(), mock.Mock()
    chlorine.list_reloads.side_effect = list(reloads) or None
    if not reloads:
        chlorine.list_reloads.return_value = []
    pagerduty.list_incidents.side_effect = list(incidents) or None
    if not incidents:
        pagerduty.list_incidents.return_value = []
    patches = [
        mock.patch.object(triggers, "read_canary", side_effect=list(canaries)),
        mock.patch("image_rollout.hooks.chlorine.ChlorineHook", return_value=chlorine),
        mock.patch("image_rollout.hooks.pagerduty.PagerDutyHook", return_value=pagerduty),
    ]
    return patches, chlorine, pagerduty


def run_soak(trigger, canaries, reloads=(), incidents=(), timeout=5.0):
    patches, chlorine, pagerduty = _soak(canaries, reloads, incidents)
    with patches[0], patches[1], patches[2]:
        return first_event(trigger, timeout), chlorine, pagerduty


def soak_reloads(n):
    return [{"status": "succeeded", "image_id": NEW["prod"]} for _ in range(n)]


def test_the_soak_passes_on_data_since_the_latest_promotion_and_says_since_when():
    since = _iso(NOW - timedelta(minutes=5))
    event, chlorine, pagerduty = run_soak(soak_trigger(), [canary(since=since)], reloads=[soak_reloads(2)])
    assert event["verdict"] == "pass" and event["since"] == since and event["figures"]["autorecovery_reloads"] == 2
    chlorine.list_reloads.assert_called_once_with(region="ap-south", since=since, kind="autorecovery")
    pagerduty.list_incidents.assert_called_once_with(since=since, title_contains="autorecovery_failed")


def test_an_incident_fails_the_soak_at_once():
    incident = {"id": "P1", "title": "autorecovery_failed on ap-south", "created_at": _iso(NOW)}
    event, *_ = run_soak(soak_trigger(), [canary(since=_iso(NOW - timedelta(minutes=1)))],
                         reloads=[soak_reloads(50)], incidents=[[incident]])
    assert event["verdict"] == "fail" and "P1" in event["figures"]["incidents"]


def test_a_pagerduty_outage_is_inconclusive_and_never_fails_a_healthy_canary():
    event, *_ = run_soak(soak_trigger(), [canary()], reloads=[soak_reloads(50)], incidents=[outage()])
    assert event["verdict"] == "inconclusive"


def test_a_pagerduty_outage_then_recovery_passes_the_healthy_canary():
    event, *_ = run_soak(
        soak_trigger(escalated=True, unreadable_since=_iso(datetime.now(UTC))),
        [canary(), canary(), canary()], reloads=[soak_reloads(50)] * 3,
        incidents=[outage(), outage(), []],
    )
    assert event["verdict"] == "pass"


def test_a_canary_that_does_not_serve_the_build_holds_and_never_passes():
    event, chlorine, _ = run_soak(soak_trigger(), [canary(serving=False)])
    assert event["verdict"] == "not_serving" and event["serves"] == OLD
    chlorine.list_reloads.assert_not_called()
    # Holding: it keeps polling without a verdict while the canary is not there, however long.
    event, chlorine, _ = run_soak(soak_trigger(holding=True), [canary(serving=False)] * 1000, timeout=0.3)
    assert event is None
    chlorine.list_reloads.assert_not_called()


def test_a_held_soak_starts_afresh_when_the_canary_serves_again():
    since = _iso(NOW)
    event, *_ = run_soak(soak_trigger(holding=True), [canary(serving=False), canary(since=since)],
                         reloads=[soak_reloads(0)])
    assert event == {"verdict": "serving", "since": since}


def _count_polls(trigger, seconds):
    """Run ``trigger`` for ``seconds`` on healthy data; how many times each system was read."""
    reads = {"launchdarkly": 0}

    def read(*_args):
        reads["launchdarkly"] += 1
        return canary(since=_iso(NOW - timedelta(seconds=1)))

    patches, chlorine, pagerduty = _soak([], reloads=[], incidents=[])
    with mock.patch.object(triggers, "read_canary", side_effect=read), patches[1], patches[2]:
        assert first_event(trigger, seconds) is None
    return reads["launchdarkly"], chlorine.list_reloads.call_count, pagerduty.list_incidents.call_count


def test_the_soak_builds_each_hook_once_per_run_and_reads_launchdarkly_through_its_own():
    flags = []

    def read(region, image_map, floors, hook):
        flags.append(hook)
        return canary(since=_iso(NOW - timedelta(seconds=1)))

    patches, chlorine, pagerduty = _soak([], reloads=[], incidents=[])
    with (mock.patch.object(triggers, "read_canary", side_effect=read),
          mock.patch("image_rollout.hooks.flags.FlagsHook") as flags_hook,
          patches[1] as chlorine_hook, patches[2] as pagerduty_hook):
        assert first_event(soak_trigger(poll=0.1, incident_poll=0.02, min_reloads=99), 0.5) is None
    assert len(flags) >= 2 and all(hook is flags_hook.return_value for hook in flags)
    assert chlorine.list_reloads.call_count >= 2 and pagerduty.list_incidents.call_count > len(flags)
    assert (flags_hook.call_count, chlorine_hook.call_count, pagerduty_hook.call_count) == (1, 1, 1)
    polls = pagerduty.list_incidents.call_count  # every poll reads PagerDuty: the first built the hooks
    assert pagerduty.reset.call_count in (polls - 1, polls)  # the run may stop in the sleep or in a read
    assert chlorine.reset.call_count == pagerduty.reset.call_count


def test_between_full_reads_only_pagerduty_is_asked_every_incident_poll():
    full, chlorine, pagerduty = _count_polls(soak_trigger(poll=0.5, incident_poll=0.05, min_reloads=99), 1.7)
    # Full reads at about 0, 0.5, 1.0 and 1.5 s; PagerDuty at every 0.05 s step (a loaded machine sleeps longer).
    assert 2 <= full <= 4 and chlorine == full
    assert pagerduty >= 4 * full


def test_without_incident_poll_every_read_is_full():
    full, chlorine, pagerduty = _count_polls(soak_trigger(poll=0.1, min_reloads=99), 0.5)
    assert full >= 2 and chlorine == full and pagerduty == full


def test_an_incident_seen_by_the_quick_read_is_decided_on_a_full_read():
    since = _iso(NOW - timedelta(seconds=1))
    incident = {"id": "P7", "title": "autorecovery_failed: c1 w1 in ap-south", "created_at": _iso(NOW)}
    event, chlorine, pagerduty = run_soak(
        soak_trigger(poll=60.0, incident_poll=0.05, min_reloads=99),
        [canary(since=since), canary(since=since)], reloads=[soak_reloads(3), soak_reloads(3)],
        incidents=[[], [], [incident], [incident]],
    )
    assert event["verdict"] == "fail" and event["figures"]["incidents"] == ["P7"] and event["since"] == since
    # full read, two quick reads (the second sees P7), then the full read that decides
    assert pagerduty.list_incidents.call_count == 4 and chlorine.list_reloads.call_count == 2


def test_an_incident_from_before_the_promotion_does_not_trigger_a_full_read():
    old = {"id": "P0", "title": "autorecovery_failed: c1 w1 in ap-south", "created_at": _iso(NOW - timedelta(hours=1))}
    patches, chlorine, pagerduty = _soak([], reloads=[], incidents=[])
    pagerduty.list_incidents.return_value = [old]
    with mock.patch.object(triggers, "read_canary", return_value=canary(since=_iso(NOW))), patches[1], patches[2]:
        assert first_event(soak_trigger(poll=60.0, incident_poll=0.05, min_reloads=99), 0.4) is None
    assert chlorine.list_reloads.call_count == 1 and pagerduty.list_incidents.call_count >= 3


def test_launchdarkly_unreadable_is_inconclusive_too():
    event, *_ = run_soak(soak_trigger(), [outage("launchdarkly")])
    assert event["verdict"] == "inconclusive"


# -- reading the canary from LaunchDarkly -----------------------------------------------------------------
class FakeFlags(FlagsHook):
    def __init__(self, serves, requests):
        self._serves, self._requests = serves, requests

    @property
    def environment_key(self):
        return "production"

    def get_flag(self):
        rules = [{"_id": "r-ap-south", "description": "ap-south"}, {"_id": "r-ap-north", "description": "ap-north"}]
        return {"environments": {"production": {"rules": rules}}, "variations": []}

    def rule_value(self, target):
        return self._serves

    def list_change_requests(self):
        return self._requests


def _applied(rule, moment):
    return {"_id": "x", "status": "completed", "appliedDate": int(moment.timestamp() * 1000),
            "instructions": [{"kind": "updateRuleVariationOrRollout", "ruleId": rule, "variationId": "v"}]}


def test_read_canary_takes_the_latest_applied_request_for_the_region_rule():
    t1, t2 = NOW - timedelta(hours=30), NOW - timedelta(hours=2)
    requests = [_applied("r-ap-south", t1), _applied("r-ap-south", t2), _applied("r-ap-north", NOW)]
    with mock.patch("image_rollout.hooks.flags.FlagsHook", side_effect=lambda: FakeFlags(NEW, requests)):
        got = read_canary("ap-south", NEW, [_iso(t1 + timedelta(hours=1))])
    assert got["serving"] is True and got["rule_id"] == "r-ap-south"
    assert got["since"] == _iso(datetime.fromtimestamp(int(t2.timestamp() * 1000) / 1000, tz=UTC))


def test_read_canary_a_recorded_rollback_after_the_last_request_is_the_floor():
    t1 = NOW - timedelta(hours=30)
    floor = _iso(NOW - timedelta(hours=1))
    with mock.patch("image_rollout.hooks.flags.FlagsHook", side_effect=lambda: FakeFlags(NEW, [_applied("r-ap-south", t1)])):
        assert read_canary("ap-south", NEW, [floor])["since"] == floor


def test_read_canary_not_serving():
    with mock.patch("image_rollout.hooks.flags.FlagsHook", side_effect=lambda: FakeFlags(OLD, [])):
        got = read_canary("ap-south", NEW, [])
    assert got["serving"] is False and got["since"] is None and got["serves"] == OLD
