"""Slack notifications: best effort, escaped, never fatal."""

from __future__ import annotations

import json
import logging

from image_rollout.slack_messages import escape_mrkdwn, notify


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


def test_the_decision_request_carries_buttons_naming_its_task_instance(sandbox):
    """The approval's notifier posts Approve / Reject buttons whose value names the request's task instance."""
    from types import SimpleNamespace

    from image_rollout.backout_dag import build_backout_dag
    from image_rollout.plan import load_plan
    from image_rollout.rollout_dag import DAG_ID, build_dag
    from image_rollout.slack_messages import DECISION_ACTIONS, parse_decision_value
    from image_rollout.slack_notifiers import DecisionRequestNotifier

    dag = build_dag(load_plan("sandbox"))
    (notifier,) = dag.get_task("ap_south.approve_ap_south").notifiers
    assert isinstance(notifier, DecisionRequestNotifier)
    (notifier,) = build_backout_dag(load_plan("sandbox")).get_task("approve_backout").notifiers
    assert isinstance(notifier, DecisionRequestNotifier)  # the backout's prod approval has the buttons too
    ti = SimpleNamespace(dag_id=DAG_ID, run_id="rollout__x", task_id="ap_south.approve_ap_south", map_index=-1,
                         try_number=2)
    DecisionRequestNotifier(channel="#sre-cfs-patching", text="Approval needed: go?").notify({"ti": ti})
    (message,) = sandbox.state()["slack"]
    assert message["text"] == "Approval needed: go?"
    (actions,) = [b for b in message["blocks"] if b["type"] == "actions"]
    buttons = {e["action_id"]: e for e in actions["elements"]}
    assert {a: DECISION_ACTIONS[a] for a in buttons} == {"image_rollout_approve": "Approve",
                                                        "image_rollout_reject": "Reject"}
    for button in buttons.values():
        assert parse_decision_value(button["value"]) == {"dag_id": DAG_ID, "run_id": "rollout__x",
                                                         "task_id": "ap_south.approve_ap_south", "map_index": -1,
                                                         "try_number": 2}
        assert button["confirm"]["confirm"]["text"] == button["text"]["text"]  # a confirmation step
