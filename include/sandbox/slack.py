"""Slack Web API: chat.postMessage and auth.test; messages are kept for the scenario checks."""

from __future__ import annotations

import hashlib
import time

from include.sandbox.core import Sandbox, SandboxError, iso
from include.sandbox.web import Request, Response, json_response


def channel_id(name: str) -> str:
    """Slack answers with the channel's id (C + 10 upper-case alphanumerics), stable per channel name."""
    if name.startswith("C") and name[1:].isalnum() and name.isupper():
        return name
    return "C" + hashlib.sha1(name.lstrip("#").encode()).hexdigest()[:10].upper()


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
        cid = channel_id(channel)
        sb.slack.append({"channel": channel, "channel_id": cid, "text": text, "time": iso(now), "ts": ts,
                         "thread_ts": body.get("thread_ts"), "blocks": body.get("blocks")})
        message = {"type": "message", "subtype": "bot_message", "text": text, "ts": ts, "bot_id": "B0ROLLOUT",
                   "user": "U0ROLLOUT", "team": "T0SANDBOX"}
        return json_response({"ok": True, "channel": cid, "ts": ts, "message": message})
    return json_response({"ok": False, "error": "unknown_method"}, 404)
