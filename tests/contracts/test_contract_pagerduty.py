"""PagerDuty: the incident list the soak gate reads, against PagerDuty's OpenAPI description."""

from __future__ import annotations

import jsonschema
import pytest

from tests.contracts.conftest import load_spec, validate


@pytest.fixture(scope="module")
def spec() -> dict:
    return load_spec("pagerduty-rest-api.openapiv3.json")


def incidents(sandbox, **params) -> dict:
    r = sandbox.get(sandbox.base + "/pagerduty/incidents", params={"service_ids[]": "PM2KE3Q", **params}, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def with_incident(sandbox):
    """An autorecovery_failed incident on the armada-infra service, raised the way the soak sees it."""
    timing = {"autorecovery_interval_seconds": 0.05, "reload_seconds": 0.02, "report_interval_seconds": 0}
    sandbox.post(sandbox.base + "/_sandbox/reset", json={"timing": timing}, timeout=5)
    sandbox.post(sandbox.base + "/_sandbox/faults", json={"faults": ["autorecovery_failed_alert:ap-south"]}, timeout=5)
    flag = sandbox.get(sandbox.base + "/launchdarkly/api/v2/flags/default/worker-image", timeout=5).json()
    rule = next(r for r in flag["environments"]["production"]["rules"] if r["ref"] == "ap-south")
    body = {"environmentKey": "production", "instructions": [
        {"kind": "updateRuleVariationOrRollout", "ruleId": rule["_id"], "variationId": flag["variations"][1]["_id"]}]}
    sandbox.patch(sandbox.base + "/launchdarkly/api/v2/flags/default/worker-image", json=body, timeout=5,
                  headers={"Content-Type": "application/json; domain-model=launchdarkly.semanticpatch"})
    import time

    deadline = time.monotonic() + 5
    while not incidents(sandbox)["incidents"]:
        assert time.monotonic() < deadline, "no incident raised"
        time.sleep(0.05)
    return sandbox


def test_incident_list_matches_the_description(with_incident, spec):
    listed = incidents(with_incident)
    validate(spec, "/incidents", "get", listed)
    assert listed["total"] is None  # counted only when asked
    counted = incidents(with_incident, total="true")
    validate(spec, "/incidents", "get", counted)
    assert counted["total"] == len(counted["incidents"]) == 1
    (incident,) = counted["incidents"]
    assert incident["type"] == "incident" and incident["service"]["type"] == "service_reference"
    one = with_incident.get(with_incident.base + f"/pagerduty/incidents/{incident['id']}", timeout=5)
    validate(spec, "/incidents/{id}", "get", one.json())


@pytest.mark.parametrize("damage", [
    lambda b: b.update(incidents=None),
    lambda b: b.update(total="1"),
    lambda b: b["incidents"][0].update(status="open"),
    lambda b: b["incidents"][0].update(created_at=1700000000),
], ids=["no-incident-list", "total-not-a-number", "unknown-status", "created-at-not-a-string"])
def test_a_wrong_pagerduty_answer_fails(with_incident, spec, damage):
    body = incidents(with_incident)
    validate(spec, "/incidents", "get", body)
    damage(body)
    with pytest.raises(jsonschema.ValidationError):
        validate(spec, "/incidents", "get", body)
