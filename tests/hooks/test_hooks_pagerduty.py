"""PagerDutyHook against the sandbox's PagerDuty, and its pagination against a stub."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from image_rollout.hooks.flags import FlagsHook
from image_rollout.hooks.pagerduty import PagerDutyHook

NEW_MAP = {"dev": "8935101", "prod": "8935154", "prodfr2": "8935160", "stage": "8935122"}


@pytest.fixture
def pagerduty(sandbox) -> PagerDutyHook:
    return PagerDutyHook()


def test_no_incidents_after_reset(pagerduty):
    assert pagerduty.list_incidents(datetime.now(UTC) - timedelta(hours=1)) == []


def test_autorecovery_failed_incident_is_listed(pagerduty, sandbox, wait_for):
    since = datetime.now(UTC) - timedelta(seconds=1)
    sandbox.faults("autorecovery_failed_alert:ap-north")
    FlagsHook().point_rule("ap-north", NEW_MAP, "canary test")
    incidents = wait_for(lambda: pagerduty.list_incidents(since, title_contains="autorecovery_failed"))
    assert "in ap-north" in incidents[0]["title"]
    assert incidents[0]["service"]["id"] == "PM2KE3Q"
    assert pagerduty.list_incidents(since, title_contains="AUTORECOVERY_FAILED") == incidents
    assert pagerduty.list_incidents(since, title_contains="disk full") == []
    assert pagerduty.list_incidents(since, until=since + timedelta(microseconds=1)) == []


def test_pagination_follows_more(stub_server, stub_connection):
    incidents = [{"id": f"P{i}", "title": f"autorecovery_failed: c w{i} in ap-south"} for i in range(250)]
    seen = []

    def pages(method, path, headers, body):
        query = parse_qs(urlsplit(path).query)
        seen.append(query)
        offset, limit = int(query["offset"][0]), int(query["limit"][0])
        page = incidents[offset : offset + limit]
        more = offset + limit < len(incidents)
        payload = {"incidents": page, "limit": limit, "offset": offset, "more": more, "total": len(incidents)}
        return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()

    stub_connection(
        "pd_stub", f"{stub_server(pages)}/pagerduty", password="pd-key-123456", extra={"service_id": "PX"}
    )
    found = PagerDutyHook(pagerduty_conn_id="pd_stub").list_incidents("2026-11-25T00:00:00Z")
    assert [i["id"] for i in found] == [i["id"] for i in incidents]
    assert len(seen) == 3
    assert seen[0]["service_ids[]"] == ["PX"]
    assert seen[0]["since"] == ["2026-11-25T00:00:00Z"]


def test_pagination_does_not_need_total(stub_server, stub_connection):
    """PagerDuty's ``total`` is null unless ``total=true`` is asked: the hook follows ``more`` only."""
    incidents = [{"id": f"P{i}", "title": "autorecovery_failed: c w in ap-south"} for i in range(150)]

    def pages(method, path, headers, body):
        query = parse_qs(urlsplit(path).query)
        assert "total" not in query
        offset, limit = int(query["offset"][0]), int(query["limit"][0])
        payload = {
            "incidents": incidents[offset : offset + limit],
            "limit": limit,
            "offset": offset,
            "more": offset + limit < len(incidents),
            "total": None,
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()

    stub_connection("pd_nototal", f"{stub_server(pages)}/pagerduty", password="pd-key-123456")
    assert len(PagerDutyHook(pagerduty_conn_id="pd_nototal").list_incidents("2026-11-25T00:00:00Z")) == 150
