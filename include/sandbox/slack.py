"""Slack Web API: chat.postMessage and auth.test; messages are kept for the scenario checks."""

from __future__ import annotations

import time

from include.sandbox.core import Sandbox, SandboxError, iso
from include.sandbox.web import Request, Response, json_response


def handle(sb: Sandbox, req: Request) -> Response:
    segs = [s for s in req.path.split("/") if s]
    if segs == ["api", "auth.test"]:
        return json_response({"ok": True, "url": f"{req.base_url}/slack/", "team": "argonauts", "user": "rollout-bot",
                              "team_id": "T0SANDBOX", "user_id": "U0ROLLOUT", "bot_id": "B0ROLLOUT"})
    if segs == ["api", "chat.postMessage"] and req.method == "POST":
        try:
            body = req.form_or_json()
        except SandboxError:
            return json_response({"ok": False, "error": "invalid_json"})
        channel = body.get("channel")
        if not channel:
            return json_response({"ok": False, "error": "channel_not_found"})
        text = body.get("text") or ""
        if not text and not body.get("blocks") and not body.get("attachments"):
            return json_response({"ok": False, "error": "no_text"})
        now = time.time()
        ts = f"{now:.6f}"
        sb.slack.append({"channel": channel, "text": text, "time": iso(now), "ts": ts,
                         "thread_ts": body.get("thread_ts"), "blocks": body.get("blocks")})
        message = {"type": "message", "text": text, "ts": ts, "bot_id": "B0ROLLOUT"}
        return json_response({"ok": True, "channel": channel, "ts": ts, "message": message})
    return json_response({"ok": False, "error": "unknown_method"}, 404)
