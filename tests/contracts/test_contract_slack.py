"""Slack: chat.postMessage and auth.test through the official `slack_sdk` client."""

from __future__ import annotations

import re

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from include.sandbox import server


def client(sandbox) -> WebClient:
    return WebClient(token="xoxb-sandbox", base_url=sandbox.base + "/slack/api/", timeout=5)


def test_slack_sdk_reads_the_sandbox(sandbox):
    web = client(sandbox)
    assert web.auth_test()["user_id"] == "U0ROLLOUT"
    sent = web.chat_postMessage(channel="#sre-cfs-patching", text="ap-south promoted")
    assert sent["ok"] is True and re.fullmatch(r"C[0-9A-Z]{8,}", sent["channel"])  # Slack answers with the id
    assert float(sent["ts"]) > 0 and sent["message"]["text"] == "ap-south promoted"
    threaded = web.chat_postMessage(channel=sent["channel"], text="reply", thread_ts=sent["ts"])
    assert threaded["channel"] == sent["channel"]
    state = sandbox.get(sandbox.base + "/_sandbox/state", timeout=5).json()["slack"]
    assert [m["channel"] for m in state] == ["#sre-cfs-patching", sent["channel"]]
    assert state[0]["channel_id"] == sent["channel"]


def test_a_wrong_slack_answer_fails(sandbox, monkeypatch):
    """Negative control: an answer that is not `ok` is an error to slack_sdk."""
    real = server.SYSTEMS["/slack"]

    def broken(sb, req):
        resp = real[1](sb, req)
        resp.body = {"ok": False, "error": "channel_not_found"}
        return resp

    monkeypatch.setitem(server.SYSTEMS, "/slack", (real[0], broken))
    with pytest.raises(SlackApiError):
        client(sandbox).chat_postMessage(channel="#sre-cfs-patching", text="x")


def test_slack_sdk_reads_blocks_updates_and_ephemerals(sandbox):
    """The approval request's shapes: blocks with buttons, chat.update by channel id and ts, chat.postEphemeral."""
    from image_rollout.slack_messages import decided_blocks, decision_blocks, decision_value

    web = client(sandbox)
    value = decision_value(dag_id="d", run_id="r", task_id="t", map_index=-1, try_number=1)
    blocks = decision_blocks("Approval needed", value)
    sent = web.chat_postMessage(channel="#sre-cfs-patching", text="Approval needed", blocks=blocks)
    assert sent["message"]["blocks"] == blocks
    done = decided_blocks(blocks, "Approval needed", "Approved by *sre-approver*")
    updated = web.chat_update(channel=sent["channel"], ts=sent["ts"], text="decided", blocks=done)
    assert updated["ts"] == sent["ts"] and updated["channel"] == sent["channel"]
    assert updated["message"]["blocks"] == done and "edited" in updated["message"]
    with pytest.raises(SlackApiError, match="channel_not_found"):  # Slack wants the channel's id, not its name
        web.chat_update(channel="#sre-cfs-patching", ts=sent["ts"], text="x")
    with pytest.raises(SlackApiError, match="message_not_found"):
        web.chat_update(channel=sent["channel"], ts="1.000001", text="x")
    ephemeral = web.chat_postEphemeral(channel=sent["channel"], user="U0NOTAPPR1", text="you are not an approver")
    assert float(ephemeral["message_ts"]) > 0
    broken = [{"type": "actions", "elements": [{"type": "button", "text": {"type": "mrkdwn", "text": "x"}}]}]
    with pytest.raises(SlackApiError, match="invalid_blocks"):
        web.chat_postMessage(channel="#x", text="x", blocks=broken)
    state = sandbox.get(sandbox.base + "/_sandbox/state", timeout=5).json()["slack"]
    assert state[0]["text"] == "decided" and state[0]["blocks"] == done and state[0]["updates"] == 1
    assert state[1]["ephemeral"] is True and state[1]["user"] == "U0NOTAPPR1"


def test_a_click_is_delivered_signed_as_slack_signs_it(sandbox, monkeypatch):
    """The sandbox's click is Slack's form-encoded block_actions payload, verified by slack_sdk's SignatureVerifier."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs

    from slack_sdk.signature import SignatureVerifier

    from image_rollout.slack_messages import decision_blocks, decision_value
    from include.sandbox.connections import slack_signing_secret

    got = []

    class App(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((dict(self.headers), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    app = ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    try:
        value = decision_value(dag_id="d", run_id="r", task_id="t", map_index=-1, try_number=2)
        sent = client(sandbox).chat_postMessage(channel="#sre-cfs-patching", text="Approval needed",
                                                blocks=decision_blocks("Approval needed", value))
        url = f"http://127.0.0.1:{app.server_address[1]}/interactions"
        r = sandbox.post(sandbox.base + "/_sandbox/slack/click", timeout=10,
                         json={"ts": sent["ts"], "action": "Approve", "user": "U0SREAPPR1", "url": url})
        assert r.status_code == 200 and r.json()["status"] == 200, r.text
        bad = sandbox.post(sandbox.base + "/_sandbox/slack/click", timeout=10,
                           json={"ts": sent["ts"], "action": "Maybe", "user": "U0SREAPPR1", "url": url})
        assert bad.status_code == 400 and "no button" in bad.json()["error"]
    finally:
        app.shutdown()
    (headers, body), = got
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert SignatureVerifier(slack_signing_secret()).is_valid_request(body, headers)
    assert not SignatureVerifier("another-secret").is_valid_request(body, headers)
    payload = json.loads(parse_qs(body.decode())["payload"][0])
    assert payload["type"] == "block_actions" and payload["user"]["id"] == "U0SREAPPR1"
    assert payload["container"]["message_ts"] == sent["ts"] and payload["channel"]["id"] == sent["channel"]
    (action,) = payload["actions"]
    assert action["action_id"] == "image_rollout_approve" and json.loads(action["value"])["try_number"] == 2
    assert payload["message"]["blocks"][1]["type"] == "actions"
