"""Approvals from Slack on the real scheduler and api-server: the prod start decision is answered by a click.

The run goes on until the ap-south approval is asked (its Slack message carries the buttons). Then, in
order: a forged click (an approver's user id put into a non-approver's signed body) and a non-approver's
click change nothing; the approver's click resumes the task with Approve and the message says who decided;
the same request sent again is refused as a replay.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from tests.harness.stack import wait_for
from tests.live.common import APPROVE, PATCHING, plan_json

NOT_APPROVER = "U0NOTAPPR1"


def _approver_slack_id() -> str:
    return plan_json()["approvers"]["slack_user_ids"]["sre-approver"]


def _post(request: dict) -> tuple[int, dict]:
    """Send a click's HTTP request (as the sandbox delivered it) to the endpoint again."""
    req = urllib.request.Request(request["url"], data=request["body"].encode(), headers=request["headers"],
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _decision_message(state: dict, run_id: str, try_number: int) -> dict | None:
    """The Slack message whose buttons answer this try's request (a try retried after Airflow's race asks
    again, in a message of its own)."""
    for message in state["slack"]:
        for block in message.get("blocks") or []:
            for element in block.get("elements") or [] if block.get("type") == "actions" else []:
                value = json.loads(element.get("value") or "{}")
                if value.get("run_id") == run_id and value.get("try_number") == try_number:
                    return message
    return None


def _pending(live, run_id: str) -> dict:
    """The approval's request, once it is waiting for an answer."""
    return wait_for(lambda: next((d for d in live.approver.pending_hitl(run_id)
                                  if d["task_instance"]["task_id"] == APPROVE), None),
                    timeout=120, interval=0.5, what="the prod approval waiting for an answer")


def _unanswered(live, run_id: str) -> bool:
    return any(d["task_instance"]["task_id"] == APPROVE for d in live.approver.pending_hitl(run_id))


def test_the_prod_start_is_decided_from_slack(live):
    run_id = live.start()
    url = live.stack.slack_interaction_url
    live.drive(run_id, lambda state, tis: _unanswered(live, run_id), approve=False, timeout=420,
               what="the prod approval to be asked")
    # Airflow 3.3.2 can fail a task resuming from a wait before it processed the worker's exit; the approval
    # then retries and asks again (ProdChangeApprovalOperator): the person answers the request standing.
    live.wait_settled(run_id, _pending(live, run_id))  # a person reads the request first (see PARKED_SETTLE)
    pending = _pending(live, run_id)
    message = _decision_message(live.sandbox.state(), run_id, pending["task_instance"]["try_number"])
    assert message is not None and message["channel"] == PATCHING, "no Slack message with the decision's buttons"

    # a non-approver clicks Approve: told so, nothing changes
    refused = live.sandbox.slack_click(message["ts"], "Approve", NOT_APPROVER, url=url)
    assert refused["status"] == 200 and refused["response"]["ok"] is False, refused["response"]
    assert "not an approver" in refused["response"]["error"]
    told = wait_for(lambda: [m for m in live.sandbox.state()["slack"] if m.get("ephemeral")
                             and m.get("user") == NOT_APPROVER], timeout=30, what="the ephemeral refusal")
    assert "changed nothing" in told[0]["text"] and told[0]["channel"] == message["channel_id"]

    # forged: the approver's id in the non-approver's signed body
    forged = dict(refused["request"])
    forged["body"] = forged["body"].replace(NOT_APPROVER, _approver_slack_id())
    status, body = _post(forged)
    assert status == 401 and "signature" in body["error"], (status, body)
    assert _unanswered(live, run_id) and live.admin.task_state(run_id, APPROVE) == "awaiting_input"

    # the approver clicks Approve: the task resumes with Approve, decided by sre-approver
    approved = live.sandbox.slack_click(message["ts"], "Approve", _approver_slack_id(), url=url)
    assert approved["status"] == 200 and approved["response"] == {"ok": True, "decided": "Approve",
                                                                  "by": "sre-approver"}, approved
    live.admin.wait_task(run_id, APPROVE, {"success"}, timeout=120)
    (detail,) = [d for d in live.admin.hitl_details(run_id, pending_only=False)
                 if d["task_instance"]["task_id"] == APPROVE]
    assert detail["chosen_options"] == ["Approve"] and detail["responded_by_user"]["id"] == "sre-approver"

    # the message now says who decided, and has no buttons left
    def updated():
        current = next(m for m in live.sandbox.state()["slack"] if m["ts"] == message["ts"])
        return current if current.get("updates") else None

    current = wait_for(updated, timeout=30, what="the Slack message updated")
    assert "Approved from Slack by *sre-approver*" in current["text"]
    assert not [b for b in current["blocks"] if b["type"] == "actions"]

    # the approver's request sent again: refused as a replay, the decision stays as it was
    status, body = _post(approved["request"])
    assert status == 409 and "replayed" in body["error"], (status, body)
    (again,) = [d for d in live.admin.hitl_details(run_id, pending_only=False)
                if d["task_instance"]["task_id"] == APPROVE]
    fields = ("chosen_options", "responded_at", "responded_by_user")
    assert {k: again[k] for k in fields} == {k: detail[k] for k in fields}
