"""LaunchDarkly: every answer a hook reads, against LaunchDarkly's OpenAPI description and parsed by
its generated client's models (`launchdarkly-api`), under both approval configurations."""

from __future__ import annotations

import copy

import jsonschema
import pydantic
import pytest
from launchdarkly_api import models

from tests.contracts.conftest import FAST, load_spec, validate

LD = "/launchdarkly"
FLAGS = "/api/v2/flags/{projectKey}"
FLAG = "/api/v2/flags/{projectKey}/{featureFlagKey}"
ENV = "/api/v2/projects/{projectKey}/environments/{environmentKey}"
APPROVALS = "/api/v2/projects/{projectKey}/flags/{featureFlagKey}/environments/{environmentKey}/approval-requests"
APPROVAL = APPROVALS + "/{id}"
SEMANTIC = {"Content-Type": "application/json; domain-model=launchdarkly.semanticpatch", "LD-API-Version": "20240415"}
HEADERS = {"LD-API-Version": "20240415", "Authorization": "api-sandbox"}
REQUIRED = {"required": True, "canReviewOwnRequest": False, "minNumApprovals": 1}


def url(template: str, **ids: str) -> str:
    values = {"projectKey": "default", "featureFlagKey": "worker-image", "environmentKey": "production", **ids}
    return LD + template.format(**values)


@pytest.fixture(scope="module")
def spec() -> dict:
    return load_spec("launchdarkly-rest-api.openapi.yaml")


def check(spec: dict, template: str, method: str, response, model, status: str = "200") -> dict:
    assert str(response.status_code) == status, response.text
    body = response.json()
    validate(spec, template, method, body, status)
    model.from_dict(copy.deepcopy(body))
    return body


def promote_instruction(http, target: str, *, add: dict | None = None) -> list[dict]:
    flag = http.get(http.base + url(FLAG), headers=HEADERS, timeout=5).json()
    rule = next(r for r in flag["environments"]["production"]["rules"] if r["ref"] == target)
    if add is not None:
        new_id = "0d1e5a1e-0000-4000-8000-00000000c0de"
        return [{"kind": "addVariation", "_id": new_id, "value": add, "name": "contract"},
                {"kind": "updateRuleVariationOrRollout", "ruleId": rule["_id"], "variationId": new_id}]
    variation = flag["variations"][1]
    return [{"kind": "updateRuleVariationOrRollout", "ruleId": rule["_id"], "variationId": variation["_id"]}]


@pytest.mark.parametrize("settings", [None, REQUIRED], ids=["approvals-not-required", "approvals-required"])
def test_every_launchdarkly_answer_matches_the_description(sandbox, spec, settings):
    http = sandbox
    r = http.post(http.base + "/_sandbox/reset", json={"timing": {**FAST, "approval_delay_seconds": 0},
                                                       "launchdarkly": {"approvalSettings": settings or {}}})
    assert r.status_code == 200
    get = lambda path: http.get(http.base + path, headers=HEADERS, timeout=5)  # noqa: E731

    env = check(spec, ENV, "get", get(url(ENV)), models.Environment)
    models.ApprovalSettings.from_dict(env["approvalSettings"])
    assert env["approvalSettings"]["required"] is bool(settings)
    check(spec, FLAGS, "get", get(url(FLAGS)), models.FeatureFlags)
    flag = check(spec, FLAG, "get", get(url(FLAG)), models.FeatureFlag)
    models.FeatureFlagConfig.from_dict(flag["environments"]["production"])

    patch = {"environmentKey": "production", "instructions": promote_instruction(http, "dev-south")}
    patched = http.patch(http.base + url(FLAG), json=patch, headers=SEMANTIC, timeout=5)
    if settings:
        check(spec, FLAG, "patch", patched, models.MethodNotAllowedErrorRep, "405")
    else:
        check(spec, FLAG, "patch", patched, models.FeatureFlag)

    fresh = {"dev": "9200001", "prod": "9200053", "prodfr2": "9200059", "stage": "9200021"}
    body = {"description": "Promote contract\n\nRollout-Key: immutable-image/contract/ap-south",
            "instructions": promote_instruction(http, "ap-south", add=fresh), "notifyMemberIds": [],
            "integrationConfig": {"target": "ap-south"}}
    created = check(spec, APPROVALS, "post", http.post(http.base + url(APPROVALS), json=body, headers=HEADERS,
                                                       timeout=5), models.FlagConfigApprovalRequestResponse, "201")
    one = url(APPROVAL, id=created["_id"])
    review = http.post(http.base + one + "/reviews", json={"kind": "comment", "comment": "seen"}, headers=HEADERS,
                       timeout=5)
    check(spec, APPROVAL + "/reviews", "post", review, models.FlagConfigApprovalRequestResponse)
    if settings:
        own = http.post(http.base + one + "/reviews", json={"kind": "approve"}, headers=HEADERS, timeout=5)
        check(spec, APPROVAL + "/reviews", "post", own, models.ForbiddenErrorRep, "403")
    got = check(spec, APPROVAL, "get", get(one), models.FlagConfigApprovalRequestResponse)
    assert got["reviewStatus"] == "approved" and all("_id" in r for r in got["allReviews"])
    applied = http.post(http.base + one + "/apply", json={"comment": "go"}, headers=HEADERS, timeout=5)
    applied = check(spec, APPROVAL + "/apply", "post", applied, models.FlagConfigApprovalRequestResponse)
    assert applied["status"] == "completed" and isinstance(applied["appliedDate"], int)
    listed = check(spec, APPROVALS, "get", get(url(APPROVALS)), models.FlagConfigApprovalRequestsResponse)
    assert "integrationConfig" not in str(listed)
    pending = http.post(http.base + url(APPROVALS), json={**body, "instructions": promote_instruction(
        http, "ap-north")}, headers=HEADERS, timeout=5).json()
    deleted = http.delete(http.base + url(APPROVAL, id=pending["_id"]), headers=HEADERS, timeout=5)
    assert deleted.status_code == 204 and deleted.content == b""
    # what FlagsHook.get_change_request(missing_ok=True) reads for a withdrawn train
    check(spec, APPROVAL, "get", get(url(APPROVAL, id=pending["_id"])), models.NotFoundErrorRep, "404")
    check(spec, FLAG, "get", get(url(FLAG)), models.FeatureFlag)


def _served(sandbox) -> dict[str, dict]:
    get = lambda path: sandbox.get(sandbox.base + path, headers=HEADERS, timeout=5).json()  # noqa: E731
    body = {"description": "x", "instructions": promote_instruction(sandbox, "ap-south")}
    request = sandbox.post(sandbox.base + url(APPROVALS), json=body, headers=HEADERS, timeout=5).json()
    return {"flag": get(url(FLAG)), "env": get(url(ENV)), "request": request}


@pytest.mark.parametrize("damage", [
    ("flag", lambda b: b["environments"]["production"].pop("salt"), FLAG, models.FeatureFlag),
    ("flag", lambda b: b.pop("_links"), FLAG, models.FeatureFlag),
    ("env", lambda b: b["approvalSettings"].pop("minNumApprovals"), ENV, models.Environment),
    ("request", lambda b: b.pop("_links"), APPROVAL, models.FlagConfigApprovalRequestResponse),
    ("request", lambda b: b.update(status="applied"), APPROVAL, models.FlagConfigApprovalRequestResponse),
], ids=["flag-without-salt", "flag-without-links", "settings-without-minNumApprovals", "request-without-links",
        "request-unknown-status"])
def test_a_wrong_launchdarkly_answer_fails_both_checks(sandbox, spec, damage):
    """Negative control: the answers the sandbox served before issue 10 (e.g. no salt, no _links) fail."""
    which, wreck, template, model = damage
    body = _served(sandbox)[which]
    validate(spec, template, "get", body)  # the real answer passes ...
    wreck(body)
    with pytest.raises(jsonschema.ValidationError):  # ... the damaged one fails the description
        validate(spec, template, "get", body)
    with pytest.raises((pydantic.ValidationError, ValueError)):  # ... and the generated client's models
        model.from_dict(body)


def test_a_review_without_id_fails(sandbox, spec):
    request = _served(sandbox)["request"]
    request["allReviews"] = [{"kind": "approve", "memberId": "change-board"}]
    with pytest.raises(jsonschema.ValidationError):
        validate(spec, APPROVAL, "get", request)
