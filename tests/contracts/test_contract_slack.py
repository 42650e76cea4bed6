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
