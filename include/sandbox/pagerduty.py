"""PagerDuty REST v2 incidents on the armada-infra service (autorecovery_failed alerts)."""

from __future__ import annotations

from include.sandbox import seed
from include.sandbox.core import Sandbox, SandboxError, iso, parse_time
from include.sandbox.web import Request, Response, json_response


def incident_json(req: Request, incident: dict) -> dict:
    url = f"{req.base_url}/pagerduty/incidents/{incident['id']}"
    return {
        "id": incident["id"],
        "type": "incident",
        "summary": f"[#{incident['incident_number']}] {incident['title']}",
        "updated_at": iso(incident["created_at"]),
        "last_status_change_at": iso(incident["created_at"]),
        "assignments": [],
        "assigned_via": "escalation_policy",
        "acknowledgements": [],
        "pending_actions": [],
        "teams": [],
        "is_mergeable": True,
        "alert_counts": {"all": 1, "triggered": 1 if incident["status"] == "triggered" else 0,
                         "resolved": 1 if incident["status"] == "resolved" else 0},
        "escalation_policy": {"id": "PESC0AR", "type": "escalation_policy_reference",
                              "summary": "armada-infra escalation",
                              "self": f"{req.base_url}/pagerduty/escalation_policies/PESC0AR",
                              "html_url": f"{req.base_url}/pagerduty/escalation_policies/PESC0AR"},
        "incident_number": incident["incident_number"],
        "title": incident["title"],
        "description": incident["description"],
        "status": incident["status"],
        "urgency": incident["urgency"],
        "incident_key": incident["incident_key"],
        "created_at": iso(incident["created_at"]),
        "html_url": url,
        "self": url,
        "service": {
            "id": seed.PD_SERVICE_ID,
            "type": "service_reference",
            "summary": seed.PD_SERVICE_SUMMARY,
            "self": f"{req.base_url}/pagerduty/services/{seed.PD_SERVICE_ID}",
            "html_url": f"{req.base_url}/pagerduty/services/{seed.PD_SERVICE_ID}",
        },
    }


def _error(status: int, message: str) -> Response:
    return json_response({"error": {"message": message, "code": 2001 if status == 400 else 2100}}, status)


def handle(sb: Sandbox, req: Request) -> Response:
    segs = [s for s in req.path.split("/") if s]
    if req.method != "GET":
        return _error(405, "Method not allowed")
    if segs == ["incidents"]:
        try:
            return _list(sb, req)
        except (SandboxError, ValueError) as exc:
            return _error(400, getattr(exc, "message", str(exc)))
    if len(segs) == 2 and segs[0] == "incidents":
        for incident in sb.incidents:
            if incident["id"] == segs[1]:
                return json_response({"incident": incident_json(req, incident)})
        return _error(404, "Not Found")
    if segs == ["services", seed.PD_SERVICE_ID]:
        return json_response({"service": {"id": seed.PD_SERVICE_ID, "name": seed.PD_SERVICE_SUMMARY,
                                          "summary": seed.PD_SERVICE_SUMMARY, "status": "active"}})
    return _error(404, "Not Found")


def _list(sb: Sandbox, req: Request) -> Response:
    services = req.query.get("service_ids[]", []) + req.query.get("service_ids", [])
    statuses = req.query.get("statuses[]", []) + req.query.get("statuses", [])
    since = parse_time(req.arg("since")) if req.arg("since") else None
    until = parse_time(req.arg("until")) if req.arg("until") else None
    limit = max(1, min(100, int(req.arg("limit") or 25)))
    offset = max(0, int(req.arg("offset") or 0))
    matching = [
        i for i in sb.incidents
        if (not services or seed.PD_SERVICE_ID in services)
        and (not statuses or i["status"] in statuses)
        and (since is None or i["created_at"] >= since)
        and (until is None or i["created_at"] < until)
    ]
    page = matching[offset: offset + limit]
    # PagerDuty counts the total only when asked (total=true); otherwise `total` is null.
    total = len(matching) if (req.arg("total") or "").lower() == "true" else None
    return json_response({"incidents": [incident_json(req, i) for i in page], "limit": limit, "offset": offset,
                          "more": offset + limit < len(matching), "total": total})
