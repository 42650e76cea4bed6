"""LaunchDarkly REST v2 (what Razee fronts): the worker-image flag, semantic patches, approval requests."""

from __future__ import annotations

import copy

from include.sandbox import seed
from include.sandbox.core import Sandbox, SandboxError
from include.sandbox.web import Request, Response, json_response

SEMANTIC_PATCH = "domain-model=launchdarkly.semanticpatch"


def _error(status: int, message: str, code: str = "invalid_request") -> Response:
    return json_response({"code": code, "message": message}, status)


#: What the API serves of an approval request (FlagConfigApprovalRequestResponse): the sandbox's own
#: bookkeeping (the integrationConfig it was sent, train, targets, deleted) stays in /_sandbox/state.
PUBLIC_APPROVAL_FIELDS = (
    "_id", "_version", "creationDate", "serviceKind", "requestorId", "description", "reviewStatus", "allReviews",
    "notifyMemberIds", "appliedDate", "appliedByMemberId", "status", "instructions", "conflicts", "_links",
    "operatingOnId", "integrationMetadata",
)


def _public(request: dict) -> dict:
    return {k: copy.deepcopy(request[k]) for k in PUBLIC_APPROVAL_FIELDS if request.get(k) is not None}


def _live(sb: Sandbox) -> list[dict]:
    return [r for r in sb.approvals.values() if not r["deleted"]]


def handle(sb: Sandbox, req: Request) -> Response:
    try:
        return _route(sb, req)
    except SandboxError as exc:
        code = {403: "forbidden", 404: "not_found", 405: "method_not_allowed", 409: "conflict"}.get(
            exc.status, exc.code)
        return _error(exc.status, exc.message, code)


def _check(project: str, flag: str, env: str | None = None) -> None:
    if project != seed.PROJECT:
        raise SandboxError(404, f"Unknown project {project!r}")
    if flag != seed.FLAG_KEY:
        raise SandboxError(404, f"Unknown flag {flag!r}")
    if env is not None and env != seed.ENVIRONMENT:
        raise SandboxError(404, f"Unknown environment {env!r}")


def _route(sb: Sandbox, req: Request) -> Response:
    segs = [s for s in req.path.split("/") if s]
    if segs[:2] != ["api", "v2"]:
        raise SandboxError(404, "Unknown resource")
    segs = segs[2:]
    # /projects/{project}/environments/{env}
    if len(segs) == 4 and segs[0] == "projects" and segs[2] == "environments" and req.method == "GET":
        _check(segs[1], seed.FLAG_KEY, segs[3])
        return json_response(sb.environment_json())
    # /flags/{project}[/{flag}]
    if segs[:1] == ["flags"] and len(segs) == 2 and req.method == "GET":
        _check(segs[1], seed.FLAG_KEY)
        return json_response({"items": [copy.deepcopy(sb.flag)], "totalCount": 1,
                              "_links": {"self": {"href": f"/api/v2/flags/{seed.PROJECT}",
                                                  "type": "application/json"}}})
    if segs[:1] == ["flags"] and len(segs) == 3:
        _check(segs[1], segs[2])
        if req.method == "GET":
            return json_response(copy.deepcopy(sb.flag))
        if req.method == "PATCH":
            return _patch(sb, req)
        raise SandboxError(405, f"{req.method} not allowed")
    # /projects/{project}/flags/{flag}/environments/{env}/approval-requests[/{id}[/reviews|/apply]]
    if len(segs) >= 7 and segs[0] == "projects" and segs[2] == "flags" and segs[4] == "environments" \
            and segs[6] == "approval-requests":
        _check(segs[1], segs[3], segs[5])
        rest = segs[7:]
        if not rest:
            if req.method == "GET":
                live = _live(sb)
                return json_response({"items": [_public(r) for r in reversed(live)], "totalCount": len(live),
                                      "_links": {"self": {"href": req.path, "type": "application/json"}}})
            if req.method == "POST":
                body = req.json()
                if "instructions" not in body:
                    raise SandboxError(400, "instructions are required")
                return json_response(_public(sb.create_approval(body)), 201)
            raise SandboxError(405, f"{req.method} not allowed")
        request = sb.approvals.get(rest[0])
        if request is None or request["deleted"]:
            raise SandboxError(404, f"Unknown approval request {rest[0]!r}")
        if len(rest) == 1 and req.method == "GET":
            return json_response(_public(request))
        if len(rest) == 1 and req.method == "DELETE":
            sb.delete_approval(request)
            return Response(204)
        if rest[1:] == ["reviews"] and req.method == "POST":
            return json_response(_public(sb.review_approval(request, req.json())))
        if rest[1:] == ["apply"] and req.method == "POST":
            return json_response(_public(sb.apply_approval(request, req.json())))
    raise SandboxError(404, "Unknown resource")


#: Semantic-patch instructions that change the flag itself, not an environment's targeting: LaunchDarkly's
#: approvals are per environment, so these go through even where approvals are required.
FLAG_LEVEL_KINDS = {"addVariation"}


def _patch(sb: Sandbox, req: Request) -> Response:
    if SEMANTIC_PATCH not in req.headers.get("content-type", "").replace(" ", ""):
        raise SandboxError(400, "the sandbox supports semantic patch only: send "
                                f"Content-Type: application/json; {SEMANTIC_PATCH}")
    body = req.json()
    env = body.get("environmentKey")
    instructions = body.get("instructions")
    flag_level = (isinstance(instructions, list) and instructions
                  and all(isinstance(i, dict) and i.get("kind") in FLAG_LEVEL_KINDS for i in instructions))
    if flag_level and env is None:
        pass  # variations belong to the flag, not to an environment: no environmentKey needed
    elif env != seed.ENVIRONMENT:
        raise SandboxError(400, f"environmentKey must be {seed.ENVIRONMENT!r}, got {env!r}")
    if sb.approval_settings["required"] and not flag_level:
        # LaunchDarkly: "If a request attempts to alter a flag configuration in an environment where
        # approvals are required for the flag, the request will fail with a 405."
        sb.apply_instructions(body.get("instructions"), dry_run=True)
        raise SandboxError(405, f"Approval is required to make changes in environment {seed.ENVIRONMENT!r}: "
                                "create an approval request")
    sb.apply_instructions(body.get("instructions"), comment=str(body.get("comment") or ""))
    return json_response(copy.deepcopy(sb.flag))
