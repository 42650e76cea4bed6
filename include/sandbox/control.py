"""Control endpoints (/_sandbox/...): reset, faults and the state snapshot the acceptance checks read."""

from __future__ import annotations

import copy
from collections import Counter

from include.sandbox import seed
from include.sandbox.core import Sandbox, SandboxError, iso
from include.sandbox.web import Request, Response, json_response

RELOAD_STATE_FIELDS = ("id", "carrier", "region", "worker", "change_id", "image_id", "kind", "reason", "error")


def handle(sb: Sandbox, req: Request) -> Response:
    try:
        return _route(sb, req)
    except SandboxError as exc:
        return json_response({"ok": False, "error": exc.message}, exc.status)


def _route(sb: Sandbox, req: Request) -> Response:
    path = req.path.strip("/")
    if path in ("", "health") and req.method == "GET":
        return json_response({"ok": True, "service": "image-rollout-sandbox"})
    if path == "reset" and req.method == "POST":
        body = req.json()
        unknown = set(body) - {"timing", "seed", "launchdarkly", "jenkins"}
        if unknown:
            raise SandboxError(400, f"unknown reset field(s): {', '.join(sorted(unknown))}")
        timing = body.get("timing") or {}
        if not isinstance(timing, dict):
            raise SandboxError(400, "timing must be an object")
        ld = body.get("launchdarkly") or {}
        jenkins = body.get("jenkins") or {}
        if not isinstance(ld, dict) or set(ld) - {"approvalSettings"}:
            raise SandboxError(400, 'launchdarkly must be {"approvalSettings": {...}}')
        if not isinstance(jenkins, dict) or set(jenkins) - {"new_build"}:
            raise SandboxError(400, 'jenkins must be {"new_build": {"image_ids_json": ..., "console": ...}}')
        sb.reset(timing, body.get("seed"), approval_settings=ld.get("approvalSettings"),
                 new_build=jenkins.get("new_build"))
        return json_response({"ok": True, "timing": sb.timing,
                              "launchdarkly": {"approvalSettings": sb.approval_settings}})
    if path == "faults":
        if req.method == "POST":
            faults = sb.set_faults(req.json().get("faults"))
            return json_response({"ok": True, "faults": faults})
        if req.method == "DELETE":
            sb.clear_faults()
            return json_response({"ok": True, "faults": []})
        if req.method == "GET":
            return json_response({"ok": True, "faults": sb.active_faults()})
    if path == "state" and req.method == "GET":
        include_autorecovery = req.arg("autorecovery", "1") not in ("0", "false", "no")
        return json_response(state(sb, req.base_url, include_autorecovery=include_autorecovery))
    raise SandboxError(404, f"no such control endpoint: {req.method} /_sandbox/{path}")


def _evidence(sb: Sandbox, base_url: str) -> dict:
    """The new build's evidence file, or the evidence file written most recently since the reset."""
    fresh = [c for c in sb.repo_commits if not c["seeded"]]
    path = seed.evidence_path(seed.NEW_BUILD)
    if not any(c["path"] == path for c in fresh):
        written = [c for c in fresh if c["path"].startswith(seed.EVIDENCE_DIR + "/")]
        if written:
            path = written[-1]["path"]
    web = f"{base_url}/github/{seed.GITHUB_OWNER}/{seed.GITHUB_REPO}"
    return {
        "path": path,
        "commits": [
            {"sha": c["sha"], "message": c["message"], "content": c["content"], "blob_sha": c["blob_sha"],
             "time": iso(c["time"]), "html_url": f"{web}/blob/{c['sha']}/{path}"}
            for c in fresh if c["path"] == path
        ],
    }


def state(sb: Sandbox, base_url: str, *, include_autorecovery: bool = True) -> dict:
    reloads = []
    summary: dict[str, Counter] = {}
    for r in sb.all_reloads():
        summary.setdefault(r["region"], Counter())[f"{r['kind']} {r['status']}"] += 1
        if r["kind"] == "autorecovery" and not include_autorecovery:
            continue
        item = {k: r[k] for k in RELOAD_STATE_FIELDS}
        item.update(result=r["status"], status=r["status"], time=iso(r["requested_at"]),
                    finished_at=iso(r["finished_at"]))
        reloads.append(item)
    report = sb.find_build(seed.REPORT_JOB, "lastBuild")
    image_builds = sorted(sb.jobs[seed.IMAGE_JOB]["builds"].values(), key=lambda b: b["number"])
    return {
        "reset_at": iso(sb.reset_at),
        "timing": dict(sb.timing),
        "images": {"previous": dict(seed.PREVIOUS_MAP), "new": dict(seed.NEW_MAP)},
        "builds": {"previous": seed.PREVIOUS_BUILD, "new": seed.NEW_BUILD},
        "flag": {
            "key": seed.FLAG_KEY,
            "version": sb.flag["_version"],
            "rules": {t: dict(sb.served_map(t)) for t in seed.TARGET_NAMES},
            "rule_builds": {t: sb.build_for_map(sb.served_map(t)) for t in seed.TARGET_NAMES},
        },
        "launchdarkly": {"approvalSettings": copy.deepcopy(sb.approval_settings)},
        "promotions": copy.deepcopy(sb.promotions),
        "evidence": _evidence(sb, base_url),
        "github_commits": [
            {"sha": c["sha"], "path": c["path"], "message": c["message"], "time": iso(c["time"])}
            for c in sb.repo_commits if not c["seeded"]
        ],
        "reloads": reloads,
        "reload_summary": {region: dict(counts) for region, counts in summary.items()},
        "slack": copy.deepcopy(sb.slack),
        "approval_requests": copy.deepcopy(list(sb.approvals.values())),
        "incidents": [
            {"id": i["id"], "incident_number": i["incident_number"], "title": i["title"], "status": i["status"],
             "region": i["region"], "carrier": i["carrier"], "worker": i["worker"], "created_at": iso(i["created_at"]),
             "service": seed.PD_SERVICE_ID}
            for i in sb.incidents
        ],
        "jenkins": {
            "immutable_image": [
                {"number": b["number"], "build_name": b["display"], "result": b["result"], "building": b["building"],
                 "image_map": b.get("image_map")}
                for b in image_builds
            ],
            "last_report": report["number"] if report else None,
            "fleet": copy.deepcopy(sb.fleet),
        },
        "faults": sb.active_faults(),
        "faults_applied": list(sb.faults_applied),
        "fault_uses_left": {k: v for k, v in sb.faults.items() if v is not None},
        "targets": seed.target_table(),
        "calls": dict(sb.calls),
        "faulted_calls": dict(sb.faulted_calls),
    }
