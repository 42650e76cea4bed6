"""chlorine (worker reloads and carrier autorecovery events): a small JSON API of the sandbox's design."""

from __future__ import annotations

from include.sandbox.core import Sandbox, SandboxError, iso, parse_time
from include.sandbox.web import Request, Response, json_response

PUBLIC_FIELDS = ("id", "carrier", "region", "worker", "change_id", "kind", "status", "image_id", "reason", "error")


def reload_json(reload: dict) -> dict:
    out = {k: reload[k] for k in PUBLIC_FIELDS}
    out["requested_at"] = iso(reload["requested_at"])
    out["finished_at"] = iso(reload["finished_at"])
    return out


def handle(sb: Sandbox, req: Request) -> Response:
    try:
        return _route(sb, req)
    except SandboxError as exc:
        return json_response({"error": exc.message}, exc.status)


def _route(sb: Sandbox, req: Request) -> Response:
    segs = [s for s in req.path.split("/") if s]
    if segs[:2] != ["api", "v1"]:
        raise SandboxError(404, f"no such endpoint: {req.path}")
    segs = segs[2:]
    if segs == ["carriers"] and req.method == "GET":
        return json_response({"carriers": [_carrier_json(c) for c in sb.carriers.values()]})
    if len(segs) == 2 and segs[0] == "carriers" and req.method == "GET":
        if segs[1] not in sb.carriers:
            raise SandboxError(404, f"unknown carrier {segs[1]!r}")
        return json_response(_carrier_json(sb.carriers[segs[1]]))
    if segs == ["reloads"] and req.method == "POST":
        body = req.json()
        carrier = body.get("carrier")
        if not isinstance(carrier, str) or not carrier:
            raise SandboxError(400, "carrier is required")
        reload = sb.request_reload(carrier, body.get("worker") or None, str(body.get("reason") or ""),
                                   body.get("change_id") or None)
        return json_response(reload_json(reload), 202)
    if segs == ["reloads"] and req.method == "GET":
        return json_response({"reloads": [reload_json(r) for r in _filtered(sb, req)]})
    if len(segs) == 2 and segs[0] == "reloads" and req.method == "GET":
        for reload in sb.all_reloads():
            if reload["id"] == segs[1]:
                return json_response(reload_json(reload))
        raise SandboxError(404, f"unknown reload {segs[1]!r}")
    raise SandboxError(404, f"no such endpoint: {req.method} {req.path}")


def _carrier_json(carrier: dict) -> dict:
    return {"name": carrier["name"], "region": carrier["region"], "image_key": carrier["image_key"],
            "workers": list(carrier["workers"])}


def _filtered(sb: Sandbox, req: Request) -> list[dict]:
    since = req.arg("since")
    since_t = parse_time(since) if since else None
    filters = {k: req.arg(k) for k in ("carrier", "region", "kind", "status", "worker", "change_id") if req.arg(k)}
    if filters.get("kind") not in (None, "requested", "autorecovery"):
        raise SandboxError(400, "kind must be requested or autorecovery")
    out = []
    for reload in sb.all_reloads():
        if since_t is not None and reload["requested_at"] < since_t:
            continue
        if any(reload[k] != v for k, v in filters.items()):
            continue
        out.append(reload)
    return out
