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
from typing import Any
from urllib.parse import urlsplit

PROJECT, ENV, FLAG = "default", "production", "worker-image"
SEMANTIC_PATCH = "domain-model=launchdarkly.semanticpatch"


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
        flag_path = f"/api/v2/flags/{PROJECT}/{FLAG}"
        env_path = f"/api/v2/projects/{PROJECT}/environments/{ENV}"
        approvals = f"/api/v2/projects/{PROJECT}/flags/{FLAG}/environments/{ENV}/approval-requests"
        if path == env_path and method == "GET":
            return 200, {"_id": "env-1", "key": ENV, "name": "Production", "approvalSettings": self.settings}
        if path == flag_path and method == "GET":
            return 200, self._flag()
        if path == flag_path and method == "PATCH":
            if SEMANTIC_PATCH not in headers.get("Content-Type", ""):
                return 400, {"code": "invalid_request", "message": "semantic patch only"}
            if self.settings["required"]:
                return 405, {
                    "code": "method_not_allowed",
                    "message": "This environment requires approval for changes",
                }
            self._apply(payload["instructions"])
            return 200, self._flag()
        if path == approvals and method == "GET":
            items = [_public(r) for r in self.requests.values()]
            return 200, {"items": items, "totalCount": len(items), "_links": {}}
        if path == approvals and method == "POST":
            try:
                self._apply(payload["instructions"], dry_run=True)
            except (ValueError, StopIteration, KeyError) as exc:
                return 400, {"code": "invalid_request", "message": str(exc)}
            request_id = uuid.uuid4().hex[:24]
            self.sent_configs[request_id] = payload.get("integrationConfig")
            self.requests[request_id] = {
                "_id": request_id,
                "_version": 1,
                "creationDate": _ms(),
                "serviceKind": "launchdarkly",
                "requestorId": "sandbox-rollout",
                "description": payload.get("description", ""),
                "kind": "approval",
                "status": "pending",
                "reviewStatus": "pending",
                "allReviews": [],
                "notifyMemberIds": payload.get("notifyMemberIds", []),
                "appliedDate": None,
                "appliedByMemberId": None,
                "instructions": payload["instructions"],
                "conflicts": [],
                "_links": {},
            }
            return 201, _public(self.requests[request_id])
        if path.startswith(approvals + "/"):
            request_id, _, action = path[len(approvals) + 1 :].partition("/")
            request = self.requests.get(request_id)
            if request is None:
                return 404, {"code": "not_found", "message": "Unknown approval request"}
            if method == "GET" and not action:
                return 200, _public(request)
            if method == "DELETE" and not action:
                del self.requests[request_id]
                return 204, None
            if method == "POST" and action == "apply":
                if request["reviewStatus"] != "approved":
                    return 400, {"code": "invalid_request", "message": "not approved"}
                self._apply(request["instructions"])
                request.update(status="completed", appliedDate=_ms(), appliedByMemberId="sandbox-rollout")
                return 200, _public(request)
        return 404, {"code": "not_found", "message": path}


def _public(request: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(request)


def _ms() -> int:
    return int(time.time() * 1000)
