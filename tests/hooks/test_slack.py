"""Slack notifications: best effort, escaped, never fatal."""

from __future__ import annotations

import json
import logging

from image_rollout.slack import escape_mrkdwn, notify


def test_escape_mrkdwn():
    assert escape_mrkdwn("a & b <!channel> > c") == "a &amp; b &lt;!channel&gt; &gt; c"
    assert escape_mrkdwn("&amp;") == "&amp;amp;"
    assert escape_mrkdwn("533-1251-880-20211101") == "533-1251-880-20211101"


def test_notify_posts_the_message(sandbox):
    assert notify("Promoted *533-1251-880-20211101* to dev-south", channel="#conductors-patching") is True
    (message,) = sandbox.state()["slack"]
    assert message["channel"] == "#conductors-patching"
    assert message["text"] == "Promoted *533-1251-880-20211101* to dev-south"


def test_notify_returns_false_when_slack_is_down(sandbox, caplog, capsys, secrets):
    sandbox.faults("slack_down")
    with caplog.at_level(logging.DEBUG):
        assert notify("hello", channel="#conductors-patching") is False
    assert sandbox.state()["slack"] == []
    logs = caplog.text + capsys.readouterr().out  # Airflow's structlog setup may print instead
    assert "Slack notification to #conductors-patching failed" in logs
    assert not any(secret in logs for secret in secrets)


def test_notify_never_raises_without_a_connection(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_SLACK", raising=False)
    assert notify("hello", channel="#x", slack_conn_id="no_such_slack") is False


def test_notify_copes_with_channel_ids_in_the_answer(stub_server, stub_connection):
    """Slack answers with the channel's id (``C...``), not the name it was sent: still accepted."""
    seen = []

    def slack(method, path, headers, body):
        seen.append(path)
        payload = {"ok": True, "channel": "C024BE91L", "ts": "1732579200.000100", "message": {"text": "hi"}}
        return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()

    base = stub_server(slack)
    stub_connection(
        "slack_ids", "", conn_type="slack", password="xoxb-test", extra={"base_url": f"{base}/api/"}
    )
    assert notify("hello", channel="#conductors-patching", slack_conn_id="slack_ids") is True
    assert seen == ["/api/chat.postMessage"]
