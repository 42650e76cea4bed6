"""
A small strict LaunchDarkly for the hook tests: the behaviour the lenient sandbox lacks.

It speaks the shapes of ``../shared/specs/launchdarkly-rest-api.openapi.yaml``: the environment
with ``approvalSettings``; 405 for a direct semantic patch when approvals are required;
approval requests (FlagConfigApprovalRequestResponse) that never echo ``integrationConfig``;
``addVariation`` inside a request's instructions (with a caller-chosen ``_id``, as the sandbox
accepts); ``DELETE`` of a request; and a lost answer (``lose_next_write``): the next write is
carried out, then the connection closes without a response.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from include.sandbox.routing import ANY, Route, dispatch

PROJECT, ENV, FLAG = "default", "production", "worker-image"
SEMANTIC_PATCH = "domain-model=launchdarkly.semanticpatch"


class _Call(NamedTuple):
    """One request as the route handlers read it."""

    method: str
    path: str
    headers: dict[str, str]
    payload: Any


class FakeLaunchDarkly:
    """State and request handler; ``respond`` plugs into the ``stub_server`` fixture."""

    def __init__(self, targets: list[str], image_map: dict[str, str], *, required: bool = False) -> None:
        self.variations = [{"_id": "var-prev", "value": dict(image_map), "name": "previous"}]
        self.rules = [
            {"_id": f"rule-{t}", "description": t, "variation": 0, "clauses": [], "trackEvents": False}
            for t in targets
        ]
        self.settings = {
            "required": required,
            "bypassApprovalsForPendingChanges": False,
            "minNumApprovals": 1,
            "canReviewOwnRequest": False,
            "canApplyDeclinedChanges": False,
            "serviceKind": "launchdarkly",
            "serviceConfig": {},
            "requiredApprovalTags": [],
            "autoApplyApprovedChanges": False,
        }
        self.requests: dict[str, dict[str, Any]] = {}
        self.sent_configs: dict[str, Any] = {}
        self.writes: list[str] = []
        self.lose_next_write = False
        self.versions: list[str | None] = []

    # -- state helpers --------------------------------------------------------------------------

    def served(self, target: str) -> dict[str, str]:
        rule = next(r for r in self.rules if r["description"] == target)
        return self.variations[rule["variation"]]["value"]

    def approve(self, request_id: str) -> None:
        request = self.requests[request_id]
        request["allReviews"].append(
            {"_id": uuid.uuid4().hex, "kind": "approve", "memberId": "change-board", "creationDate": _ms()}
        )
        request["reviewStatus"] = "approved"

    def _flag(self) -> dict[str, Any]:
        return {
            "key": FLAG,
            "variations": copy.deepcopy(self.variations),
            "environments": {ENV: {"rules": copy.deepcopy(self.rules), "_site": {}, "version": 1}},
        }

    def _apply(self, instructions: list[dict[str, Any]], *, dry_run: bool = False) -> None:
        variations, rules = copy.deepcopy(self.variations), copy.deepcopy(self.rules)
        for ins in instructions:
            if ins["kind"] == "addVariation":
                if any(v["value"] == ins["value"] for v in variations):
                    raise ValueError("a variation with this value exists")
                variations.append(
                    {
                        "_id": ins.get("_id") or uuid.uuid4().hex,
                        "value": ins["value"],
                        "name": ins.get("name"),
                    }
                )
            elif ins["kind"] == "updateRuleVariationOrRollout":
                rule = next(r for r in rules if r["_id"] == ins["ruleId"])
                rule["variation"] = next(
                    i for i, v in enumerate(variations) if v["_id"] == ins["variationId"]
                )
            else:
                raise ValueError(f"unsupported {ins['kind']}")
        if not dry_run:
            self.variations, self.rules = variations, rules

    # -- HTTP -----------------------------------------------------------------------------------

    def respond(self, method: str, target: str, headers: dict[str, str], body: bytes):
        self.versions.append(headers.get("LD-API-Version"))
        path = urlsplit(target).path.removeprefix("/launchdarkly")
        payload = json.loads(body) if body else {}
        status, answer = self._route(method, path, headers, payload)
        if method != "GET" and status < 400:
            self.writes.append(f"{method} {path}")
            if self.lose_next_write:
                self.lose_next_write = False
                return None
        data = b"" if answer is None else json.dumps(answer).encode()
        return status, {"Content-Type": "application/json"}, data

    def _route(self, method: str, path: str, headers: dict[str, str], payload: Any):
        # Split as is (no empty segment dropped): a path the table does not spell exactly is a 404.
        answer = dispatch(ROUTES, method, path.split("/"), self, _Call(method, path, headers, payload))
        return answer or (404, {"code": "not_found", "message": path})

    def _environment(self, call: _Call):
        return 200, {"_id": "env-1", "key": ENV, "name": "Production", "approvalSettings": self.settings}

    def _get_flag(self, call: _Call):
        return 200, self._flag()

    def _patch_flag(self, call: _Call):
        if SEMANTIC_PATCH not in call.headers.get("Content-Type", ""):
            return 400, {"code": "invalid_request", "message": "semantic patch only"}
        if self.settings["required"]:
            return 405, {
                "code": "method_not_allowed",
                "message": "This environment requires approval for changes",
            }
        self._apply(call.payload["instructions"])
        return 200, self._flag()

    def _list_requests(self, call: _Call):
        items = [_public(r) for r in self.requests.values()]
        return 200, {"items": items, "totalCount": len(items), "_links": {}}

    def _create_request(self, call: _Call):
        try:
            self._apply(call.payload["instructions"], dry_run=True)
        except (ValueError, StopIteration, KeyError) as exc:
            return 400, {"code": "invalid_request", "message": str(exc)}
        request_id = uuid.uuid4().hex[:24]
        self.sent_configs[request_id] = call.payload.get("integrationConfig")
        self.requests[request_id] = {
            "_id": request_id,
            "_version": 1,
            "creationDate": _ms(),
            "serviceKind": "launchdarkly",
            "requestorId": "sandbox-rollout",
            "description": call.payload.get("description", ""),
            "kind": "approval",
            "status": "pending",
            "reviewStatus": "pending",
            "allReviews": [],
            "notifyMemberIds": call.payload.get("notifyMemberIds", []),
            "appliedDate": None,
            "appliedByMemberId": None,
            "instructions": call.payload["instructions"],
            "conflicts": [],
            "_links": {},
        }
        return 201, _public(self.requests[request_id])

    def _request_action(self, call: _Call, request_id: str, action: list[str]):
        """One request: read, delete or apply it; 404 when it is unknown, whatever the action."""
        request = self.requests.get(request_id)
        if request is None:
            return 404, {"code": "not_found", "message": "Unknown approval request"}
        tail = "/".join(action)  # what follows the id, as the path spells it ("" for nothing, even "ID/")
        return dispatch(REQUEST_ROUTES, call.method, tail.split("/") if tail else [], self, request_id, request)

    def _get_request(self, request_id: str, request: dict[str, Any]):
        return 200, _public(request)

    def _delete_request(self, request_id: str, request: dict[str, Any]):
        del self.requests[request_id]
        return 204, None

    def _apply_request(self, request_id: str, request: dict[str, Any]):
        if request["reviewStatus"] != "approved":
            return 400, {"code": "invalid_request", "message": "not approved"}
        self._apply(request["instructions"])
        request.update(status="completed", appliedDate=_ms(), appliedByMemberId="sandbox-rollout")
        return 200, _public(request)


_FLAG = f"/api/v2/flags/{PROJECT}/{FLAG}"
_APPROVALS = f"/api/v2/projects/{PROJECT}/flags/{FLAG}/environments/{ENV}/approval-requests"
#: What the fake serves, per path (the strict subset of LaunchDarkly the hook tests need).
ROUTES: tuple[Route, ...] = (
    ("GET", f"/api/v2/projects/{PROJECT}/environments/{ENV}", FakeLaunchDarkly._environment),
    ("GET", _FLAG, FakeLaunchDarkly._get_flag),
    ("PATCH", _FLAG, FakeLaunchDarkly._patch_flag),
    ("GET", _APPROVALS, FakeLaunchDarkly._list_requests),
    ("POST", _APPROVALS, FakeLaunchDarkly._create_request),
    (ANY, _APPROVALS + "/{request_id}/{action*}", FakeLaunchDarkly._request_action),
)
#: Below one approval request (no reviews: the fake's change board is ``approve``).
REQUEST_ROUTES: tuple[Route, ...] = (
    ("GET", "", FakeLaunchDarkly._get_request),
    ("DELETE", "", FakeLaunchDarkly._delete_request),
    ("POST", "apply", FakeLaunchDarkly._apply_request),
)


def _public(request: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(request)


def _ms() -> int:
    return int(time.time() * 1000)
