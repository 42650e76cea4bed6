"""Slack: Web API (chat.postMessage, chat.update, chat.postEphemeral, auth.test), and a click on a message's
button delivered to the app's interaction URL as Slack delivers it (signed form post of a ``block_actions``
payload). Messages are kept for the scenario checks."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request

from include.sandbox.connections import slack_signing_secret
from include.sandbox.core import Sandbox, SandboxError, iso
from include.sandbox.web import Request, Response, json_response

TEAM_ID = "T0SANDBOX"
BOT_USER = "U0ROLLOUT"
APP_ID = "A0ROLLOUT"
INTERACTION_URL_ENV = "SANDBOX_SLACK_INTERACTION_URL"
#: Block types the sandbox accepts (Slack's layout blocks), and the limits Slack enforces on them.
BLOCK_TYPES = {"section", "actions", "context", "divider", "header", "image", "input", "rich_text", "file", "video"}
_USER_ID = re.compile(r"[UW][A-Z0-9]{2,20}")


def channel_id(name: str) -> str:
    """Slack answers with the channel's id (C + 10 upper-case alphanumerics), stable per channel name."""
    if name.startswith("C") and name[1:].isalnum() and name.isupper():
        return name
    return "C" + hashlib.sha1(name.lstrip("#").encode()).hexdigest()[:10].upper()


def _ok_error(error: str, **extra) -> Response:
    """Slack answers a refused call with HTTP 200 and ``ok: false``."""
    return json_response({"ok": False, "error": error, **extra})


def check_blocks(raw) -> tuple[list | None, list[str]]:
    """``blocks`` as Slack reads them (a JSON array, or its text in a form body): (blocks, errors)."""
    if raw in (None, ""):
        return None, []
    blocks, errors = _decode_blocks(raw)
    if blocks is None:
        return None, errors
    action_ids: set[str] = set()  # unique across the whole message, as Slack wants
    for i, block in enumerate(blocks):
        errors += _block_errors(block, f"[json-pointer:/blocks/{i}]", action_ids)
    return (None, errors) if errors else (blocks, [])


def _decode_blocks(raw) -> tuple[list | None, list[str]]:
    """The block array, or the error that makes it no array of at most 50 blocks."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None, ["blocks is not valid JSON"]
    if not isinstance(raw, list) or len(raw) > 50:
        return None, ["blocks must be an array of at most 50 blocks"]
    return raw, []


def _block_errors(block, where: str, action_ids: set[str]) -> list[str]:
    """One block's errors: its type, block_id and section text, and its elements (actions, context)."""
    if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
        return [f"unsupported type {where}"]
    errors = []
    if len(str(block.get("block_id") or "")) > 255:
        errors.append(f"must be less than 256 characters {where}/block_id")
    if block["type"] == "section" and not (block.get("text") or block.get("fields")):
        errors.append(f"must provide text or fields {where}")
    if block["type"] in ("actions", "context"):
        errors += _element_errors(block, where, action_ids)
    return errors


def _element_errors(block: dict, where: str, action_ids: set[str]) -> list[str]:
    """1 to 25 elements, each an object; the buttons of an actions block checked as buttons."""
    elements = block.get("elements")
    if not isinstance(elements, list) or not elements or len(elements) > 25:
        return [f"must provide 1 to 25 elements {where}/elements"]
    errors = []
    for j, element in enumerate(elements):
        at = f"{where}/elements/{j}"
        if not isinstance(element, dict):
            errors.append(f"must be an object {at}")
        elif block["type"] == "actions" and element.get("type") == "button":
            errors += _button_errors(element, at, action_ids)
    return errors


def _button_errors(element: dict, at: str, action_ids: set[str]) -> list[str]:
    """A button's label, action_id (unique in the message) and value lengths, and its style."""
    errors = []
    label = element.get("text") or {}
    if label.get("type") != "plain_text" or not 0 < len(str(label.get("text") or "")) <= 75:
        errors.append(f"must be plain_text of 1 to 75 characters {at}/text")
    action_id = str(element.get("action_id") or "")
    if len(action_id) > 255 or len(str(element.get("value") or "")) > 2000:
        errors.append(f"action_id or value too long {at}")
    if action_id and action_id in action_ids:
        errors.append(f"duplicate action_id {action_id} {at}")
    action_ids.add(action_id)
    if element.get("style") not in (None, "primary", "danger"):
        errors.append(f"must be primary or danger {at}/style")
    return errors


def _message(m: dict) -> dict:
    """A stored message the way Slack returns it (bot message, with blocks when it has them)."""
    out = {"type": "message", "subtype": "bot_message", "text": m["text"], "ts": m["ts"], "bot_id": "B0ROLLOUT",
           "user": BOT_USER, "team": TEAM_ID, "app_id": APP_ID}
    if m.get("blocks"):
        out["blocks"] = m["blocks"]
    if m.get("edited"):
        out["edited"] = m["edited"]
    return out


def _find(sb: Sandbox, channel: str, ts: str) -> dict | None:
    for m in sb.slack:
        if m["ts"] == ts and not m.get("ephemeral") and channel in (m["channel_id"],):
            return m
    return None


def handle(sb: Sandbox, req: Request) -> Response:
    segs = [s for s in req.path.split("/") if s]
    if segs == ["api", "auth.test"]:
        return json_response({"ok": True, "url": f"{req.base_url}/slack/", "team": "argonauts", "user": "rollout-bot",
                              "team_id": TEAM_ID, "user_id": BOT_USER, "bot_id": "B0ROLLOUT"})
    if len(segs) == 2 and segs[0] == "api" and req.method == "POST" and segs[1] in (
            "chat.postMessage", "chat.update", "chat.postEphemeral"):
        try:
            body = req.form_or_json()
        except SandboxError:
            return _ok_error("invalid_json")
        return {"chat.postMessage": _post, "chat.update": _update, "chat.postEphemeral": _ephemeral}[segs[1]](sb, body)
    if len(segs) == 4 and segs[0] == "actions" and req.method == "POST":
        return _response_url(sb, "/".join(segs[1:]), req)
    return json_response({"ok": False, "error": "unknown_method"}, 404)


def _post(sb: Sandbox, body: dict) -> Response:
    channel = body.get("channel")
    if not channel:
        return _ok_error("channel_not_found")
    text = body.get("text") or ""
    blocks, errors = check_blocks(body.get("blocks"))
    if errors:
        return _ok_error("invalid_blocks", errors=errors)
    if not text and not blocks and not body.get("attachments"):
        return _ok_error("no_text")
    ts = _ts()
    cid = channel_id(channel)
    record = {"channel": channel, "channel_id": cid, "text": text, "time": iso(time.time()), "ts": ts,
              "thread_ts": body.get("thread_ts"), "blocks": blocks}
    sb.slack.append(record)
    return json_response({"ok": True, "channel": cid, "ts": ts, "message": _message(record)})


def _update(sb: Sandbox, body: dict) -> Response:
    """``chat.update``: the channel's id (as Slack requires) and the message's ts; only the app's own messages."""
    channel, ts = body.get("channel"), body.get("ts")
    if not channel:
        return _ok_error("channel_not_found")
    if not ts:
        return _ok_error("message_not_found")
    record = _find(sb, str(channel), str(ts))
    if record is None:
        known = any(m["channel_id"] == channel for m in sb.slack)
        return _ok_error("message_not_found" if known else "channel_not_found")
    blocks, errors = check_blocks(body.get("blocks"))
    if errors:
        return _ok_error("invalid_blocks", errors=errors)
    text = body.get("text")
    if not text and blocks is None:
        return _ok_error("no_text")
    if text is not None:
        record["text"] = text
    if blocks is not None or "blocks" in body:
        record["blocks"] = blocks
    record["edited"] = {"user": BOT_USER, "ts": _ts()}
    record.setdefault("updates", 0)
    record["updates"] += 1
    return json_response({"ok": True, "channel": record["channel_id"], "ts": record["ts"], "text": record["text"],
                          "message": _message(record)})


def _ephemeral(sb: Sandbox, body: dict) -> Response:
    """``chat.postEphemeral``: shown to one user in a channel; Slack keeps no history of it (the sandbox does)."""
    channel, user = body.get("channel"), body.get("user")
    if not channel:
        return _ok_error("channel_not_found")
    if not user or not _USER_ID.fullmatch(str(user)):
        return _ok_error("user_not_found")
    text = body.get("text") or ""
    blocks, errors = check_blocks(body.get("blocks"))
    if errors:
        return _ok_error("invalid_blocks", errors=errors)
    if not text and not blocks:
        return _ok_error("no_text")
    ts = _ts()
    sb.slack.append({"channel": channel, "channel_id": channel_id(channel), "text": text, "time": iso(time.time()),
                     "ts": ts, "thread_ts": body.get("thread_ts"), "blocks": blocks, "ephemeral": True, "user": user})
    return json_response({"ok": True, "message_ts": ts})


def _response_url(sb: Sandbox, key: str, req: Request) -> Response:
    """A click's ``response_url``: an ephemeral answer to the clicker, or a replacement of the message."""
    target = sb.slack_response_urls.get(key)
    if target is None:
        return json_response({"ok": False, "error": "expired_url"}, 404)
    try:
        body = req.json()
    except SandboxError:
        return json_response({"ok": False, "error": "invalid_payload"}, 400)
    if body.get("delete_original"):
        record = _find(sb, target["channel_id"], target["ts"])
        if record is not None:
            sb.slack.remove(record)
        return json_response({"ok": True})
    if body.get("replace_original"):
        done = _update(sb, {"channel": target["channel_id"], "ts": target["ts"], "text": body.get("text"),
                            "blocks": body.get("blocks")})
    else:
        done = _ephemeral(sb, {"channel": target["channel_id"], "user": target["user"], "text": body.get("text"),
                               "blocks": body.get("blocks")})
    # A response URL answers {"ok": true} (or the Web API's error), not the Web API's message fields.
    return json_response({"ok": True}) if done.body.get("ok") else json_response(done.body, 400)


def _ts() -> str:
    return f"{time.time():.6f}"


# -- a click on a button, delivered to the app (control endpoint POST /_sandbox/slack/click) -------------


def build_click(sb: Sandbox, body: dict, base_url: str) -> dict:
    """The signed request Slack sends when ``user`` clicks ``action`` on the message ``ts`` (under the lock).

    ``action`` is the button's ``action_id`` or its label (``Approve``). Returns ``{"url", "headers", "body"}``.
    """
    ts, action, user = body.get("ts"), body.get("action"), body.get("user")
    unknown = set(body) - {"ts", "action", "user", "user_name", "url"}
    if unknown:
        raise SandboxError(400, f"unknown click field(s): {', '.join(sorted(unknown))}")
    if not isinstance(user, str) or not _USER_ID.fullmatch(user):
        raise SandboxError(400, f"user must be a Slack user id like U012AB3CD, not {user!r}")
    message = next((m for m in sb.slack if m["ts"] == ts and not m.get("ephemeral")), None)
    if message is None:
        raise SandboxError(404, f"no message with ts {ts!r}")
    button, block_id = None, None
    for block in message.get("blocks") or []:
        if block.get("type") != "actions":
            continue
        for element in block.get("elements") or []:
            if element.get("type") == "button" and action in (element.get("action_id"),
                                                              (element.get("text") or {}).get("text")):
                button, block_id = element, block.get("block_id")
    if button is None:
        raise SandboxError(400, f"message {ts} has no button {action!r} (any more)")
    url = body.get("url") or os.environ.get(INTERACTION_URL_ENV)
    if not url:
        raise SandboxError(400, f"no interaction URL: set {INTERACTION_URL_ENV} for the sandbox or pass \"url\"")
    now = time.time()
    key = f"{TEAM_ID}/{int(now * 1000)}/{secrets.token_hex(12)}"
    sb.slack_response_urls[key] = {"channel_id": message["channel_id"], "ts": message["ts"], "user": user}
    name = body.get("user_name") or user.lower()
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": name, "name": name, "team_id": TEAM_ID},
        "api_app_id": APP_ID,
        "token": "sandbox-verification-token",
        "container": {"type": "message", "message_ts": message["ts"], "channel_id": message["channel_id"],
                      "is_ephemeral": False},
        "trigger_id": f"{int(now)}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}",
        "team": {"id": TEAM_ID, "domain": "argonauts"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": message["channel_id"], "name": message["channel"].lstrip("#")},
        "message": _message(message),
        "state": {"values": {}},
        "response_url": f"{base_url}/slack/actions/{key}",
        "actions": [{
            "type": "button", "action_id": button.get("action_id"), "block_id": block_id,
            "text": {**(button.get("text") or {}), "emoji": True}, "value": button.get("value"),
            "style": button.get("style"), "action_ts": f"{now:.6f}",
        }],
    }
    form = urllib.parse.urlencode({"payload": json.dumps(payload, separators=(",", ":"))})
    stamp = str(int(now))
    digest = hmac.new(slack_signing_secret().encode(), f"v0:{stamp}:{form}".encode(), hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": stamp,
               "X-Slack-Signature": f"v0={digest}", "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)"}
    return {"url": url, "headers": headers, "body": form}


def deliver(click: dict, timeout: float = 30) -> dict:
    """POST the click (outside the sandbox lock: the app calls back into the sandbox); the app's answer."""
    request = urllib.request.Request(click["url"], data=click["body"].encode(), method="POST",
                                     headers=click["headers"])
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError as exc:
        return {"ok": False, "error": f"could not deliver the click to {click['url']}: {exc}", "request": click}
    try:
        answer = json.loads(raw) if raw.strip() else None
    except ValueError:
        answer = raw.decode("utf-8", "replace")[:2000]
    return {"ok": True, "status": status, "response": answer, "request": click}
