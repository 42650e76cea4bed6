"""LaunchDarkly REST v2 (what Razee fronts): the worker-image flag, semantic patches, approval requests."""

from __future__ import annotations

import copy

from include.sandbox import seed
from include.sandbox.core import Sandbox, SandboxError
from include.sandbox.routing import ANY, Route, dispatch
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
    resp = dispatch(ROUTES, req.method, segs, sb, req)
    if resp is None:
        raise SandboxError(404, "Unknown resource")
    return resp


def _environment(sb: Sandbox, req: Request, project: str, env: str) -> Response:
    _check(project, seed.FLAG_KEY, env)
    return json_response(sb.environment_json())


def _flag_list(sb: Sandbox, req: Request, project: str) -> Response:
    _check(project, seed.FLAG_KEY)
    return json_response({"items": [copy.deepcopy(sb.flag)], "totalCount": 1,
                          "_links": {"self": {"href": f"/api/v2/flags/{seed.PROJECT}",
                                              "type": "application/json"}}})


def _flag(sb: Sandbox, req: Request, project: str, flag: str) -> Response:
    _check(project, flag)
    return json_response(copy.deepcopy(sb.flag))


def _flag_patch(sb: Sandbox, req: Request, project: str, flag: str) -> Response:
    _check(project, flag)
    return _patch(sb, req)


def _not_allowed(sb: Sandbox, req: Request, **where: str) -> Response:
    """A known resource, another method: 404 for an unknown project/flag/environment first, as before."""
    _check(**where)
    raise SandboxError(405, f"{req.method} not allowed")


def _approval_list(sb: Sandbox, req: Request, **where: str) -> Response:
    _check(**where)
    live = _live(sb)
    return json_response({"items": [_public(r) for r in reversed(live)], "totalCount": len(live),
                          "_links": {"self": {"href": req.path, "type": "application/json"}}})


def _approval_create(sb: Sandbox, req: Request, **where: str) -> Response:
    _check(**where)
    body = req.json()
    if "instructions" not in body:
        raise SandboxError(400, "instructions are required")
    return json_response(_public(sb.create_approval(body)), 201)


def _approval(sb: Sandbox, project: str, flag: str, env: str, request_id: str) -> dict:
    """The live approval request the path names (404 for an unknown or deleted one)."""
    _check(project, flag, env)
    request = sb.approvals.get(request_id)
    if request is None or request["deleted"]:
        raise SandboxError(404, f"Unknown approval request {request_id!r}")
    return request


def _approval_get(sb: Sandbox, req: Request, **where: str) -> Response:
    return json_response(_public(_approval(sb, **where)))


def _approval_delete(sb: Sandbox, req: Request, **where: str) -> Response:
    sb.delete_approval(_approval(sb, **where))
    return Response(204)


def _approval_review(sb: Sandbox, req: Request, **where: str) -> Response:
    return json_response(_public(sb.review_approval(_approval(sb, **where), req.json())))


def _approval_apply(sb: Sandbox, req: Request, **where: str) -> Response:
    return json_response(_public(sb.apply_approval(_approval(sb, **where), req.json())))


def _approval_other(sb: Sandbox, req: Request, rest: list[str], **where: str) -> Response:
    """Anything else below a request: 404 naming the request when it is unknown, else an unknown resource."""
    _approval(sb, **where)
    raise SandboxError(404, "Unknown resource")


_FLAG = "api/v2/flags/{project}/{flag}"
_APPROVALS = "api/v2/projects/{project}/flags/{flag}/environments/{env}/approval-requests"
_APPROVAL = _APPROVALS + "/{request_id}"
#: LaunchDarkly's resources the sandbox serves, per path (API.md "LaunchDarkly / Razee flags").
ROUTES: tuple[Route, ...] = (
    ("GET", "api/v2/projects/{project}/environments/{env}", _environment),
    ("GET", "api/v2/flags/{project}", _flag_list),
    ("GET", _FLAG, _flag),
    ("PATCH", _FLAG, _flag_patch),
    (ANY, _FLAG, _not_allowed),
    ("GET", _APPROVALS, _approval_list),
    ("POST", _APPROVALS, _approval_create),
    (ANY, _APPROVALS, _not_allowed),
    ("GET", _APPROVAL, _approval_get),
    ("DELETE", _APPROVAL, _approval_delete),
    ("POST", _APPROVAL + "/reviews", _approval_review),
    ("POST", _APPROVAL + "/apply", _approval_apply),
    (ANY, _APPROVAL + "/{rest*}", _approval_other),
)


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
