from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from image_rollout import verdicts

NEW, OLD = "8935101", "8495980"
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def reload(worker, status="succeeded", image=NEW, change="CHG5530645"):
    return {"worker": worker, "status": status, "image_id": image, "change_id": change}


def test_three_reloads_with_the_new_image_pass():
    d = verdicts.evaluate_reloads([reload(f"w-{i}") for i in range(3)], image_id=NEW, required=3, max_failed=0)
    assert d.verdict == "pass"
    assert [r["worker"] for r in d.figures["reloads"]] == ["w-0", "w-1", "w-2"]


def test_reloads_with_the_old_image_do_not_count():
    d = verdicts.evaluate_reloads([reload("w-0"), reload("w-1"), reload("w-2", image=OLD)], image_id=NEW,
                               required=3, max_failed=0)
    assert d.verdict == "wait"
    assert d.figures["succeeded_with_new_image"] == 2 and d.figures["other_image"] == 1


def test_the_same_worker_twice_is_one_machine():
    d = verdicts.evaluate_reloads([reload("w-0"), reload("w-0"), reload("w-1")], image_id=NEW, required=3,
                               max_failed=0)
    assert d.verdict == "wait"


def test_a_failed_reload_with_the_new_image_fails_the_gate():
    d = verdicts.evaluate_reloads([reload("w-0"), reload("w-1"), reload("w-9", status="failed")], image_id=NEW,
                               required=3, max_failed=0)
    assert d.verdict == "fail" and "w-9" in d.reason


def test_pending_reloads_do_not_count():
    d = verdicts.evaluate_reloads([reload("w-0", status="pending")], image_id=NEW, required=1, max_failed=0)
    assert d.verdict == "wait"


def test_malformed_reload_is_an_error_not_a_pass():
    with pytest.raises(ValueError, match="missing"):
        verdicts.evaluate_reloads([{"worker": "w"}], image_id=NEW, required=1, max_failed=0)


def soak(reloads, incidents=(), now=T0 + timedelta(hours=24), **kw):
    args = dict(reloads=reloads, incidents=incidents, image_id=NEW, started_at=T0, now=now,
                min_duration=24 * 3600, min_reloads=10, timeout=72 * 3600, incident_title="autorecovery_failed")
    args.update(kw)
    return verdicts.evaluate_soak(**args)


def ar(n, image=NEW, status="succeeded"):
    return [{"status": status, "image_id": image} for _ in range(n)]


def test_soak_passes_with_ten_reloads_after_a_day():
    assert soak(ar(10)).verdict == "pass"


def test_nine_reloads_are_not_enough():
    d = soak(ar(9))
    assert d.verdict == "wait" and d.figures["autorecovery_reloads"] == 9


def test_nine_reloads_at_the_time_limit_fail():
    d = soak(ar(9), now=T0 + timedelta(hours=72))
    assert d.verdict == "fail" and "9/10" in d.reason


def test_ten_reloads_before_the_day_is_over_wait():
    d = soak(ar(12), now=T0 + timedelta(hours=23, minutes=59, seconds=59))
    assert d.verdict == "wait" and d.figures["seconds_left"] == 1


def test_an_alert_one_second_before_the_soak_ends_fails_it():
    incident = {"id": "P1", "title": "autorecovery_failed: prod-syd01-carrier4 worker-7 in ap-south",
                "created_at": (T0 + timedelta(hours=24) - timedelta(seconds=1)).isoformat()}
    d = soak(ar(30), incidents=[incident])
    assert d.verdict == "fail" and "autorecovery_failed" in d.reason


def test_an_alert_from_before_the_promotion_does_not_count():
    incident = {"id": "P0", "title": "autorecovery_failed: old", "created_at": (T0 - timedelta(seconds=1)).isoformat()}
    assert soak(ar(10), incidents=[incident]).verdict == "pass"


def test_other_incidents_do_not_fail_the_soak():
    incident = {"id": "P2", "title": "disk_full on prod-syd01", "created_at": T0.isoformat()}
    assert soak(ar(10), incidents=[incident]).verdict == "pass"


def test_reloads_with_the_old_image_do_not_count_in_the_soak():
    assert soak(ar(9) + ar(5, image=OLD)).verdict == "wait"


def test_build_order():
    assert verdicts.is_newer("533-1251-880-20211101", "532-1250-879-20210818")
    assert verdicts.is_newer("532-1250-880-20210818", "532-1250-879-20210818")
    assert not verdicts.is_newer("999-1-1-20200101", "532-1250-879-20210818")


# -- the soak counts from the canary's latest promotion (issue 9 item 1) ---------------------------------
def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _request(rule_id, applied, status="completed"):
    return {"_id": f"cr-{applied}", "status": status, "appliedDate": _ms(applied) if applied else None,
            "instructions": [{"kind": "updateRuleVariationOrRollout", "ruleId": rule_id, "variationId": "v1"}]}


def test_the_soak_counts_from_the_latest_applied_change_of_the_rule():
    requests = [_request("r-ap-south", T0), _request("r-ap-south", T0 + timedelta(hours=3)),
                _request("r-ap-north", T0 + timedelta(hours=5)), _request("r-ap-south", None, status="pending")]
    assert verdicts.latest_rule_change(requests, "r-ap-south") == T0 + timedelta(hours=3)
    assert verdicts.soak_since(requests, "r-ap-south") == T0 + timedelta(hours=3)


def test_a_later_recorded_change_wins_over_an_older_applied_request():
    # Under approvals-not-required a rollback is a direct write with no appliedDate: its recorded time
    # (and this run's own promotion time) are floors the soak never counts from before.
    requests = [_request("r-ap-south", T0)]
    rollback_at = (T0 + timedelta(hours=1)).isoformat()
    assert verdicts.soak_since(requests, "r-ap-south", [None, rollback_at]) == T0 + timedelta(hours=1)
    assert verdicts.soak_since(requests, "r-ap-south", [(T0 - timedelta(hours=1)).isoformat()]) == T0


def test_no_known_promotion_is_no_soak_start():
    assert verdicts.soak_since([], "r-ap-south") is None
    assert verdicts.soak_since([{"appliedDate": True, "instructions": [{"ruleId": "r-ap-south"}]}], "r-ap-south") is None


def test_reloads_before_the_latest_promotion_never_pass_the_soak():
    """After a rollback and a re-promotion, the soak measured from the new promotion has not run long enough."""
    repromoted = T0 + timedelta(hours=30)
    since = verdicts.soak_since([_request("r", T0), _request("r", repromoted)], "r")
    d = verdicts.evaluate_soak(reloads=[], incidents=[{"title": "autorecovery_failed", "created_at": T0.isoformat()}],
                            image_id=NEW, started_at=since, now=repromoted + timedelta(hours=1), min_duration=86400,
                            min_reloads=10, timeout=3 * 86400, incident_title="autorecovery_failed")
    assert d.verdict == "wait"  # the incident before the re-promotion is not counted


# -- the gate operators: hold, escalate once, ask, and what each answer does (issue 9 item 2) ------------
from unittest import mock  # noqa: E402

from airflow.sdk.exceptions import AirflowFailException, TaskAwaitingInput, TaskDeferred  # noqa: E402

from image_rollout.operators import base  # noqa: E402
from image_rollout.operators import gates as gate_operators  # noqa: E402
from image_rollout.triggers import SoakTrigger  # noqa: E402

BUILD = {"name": "532-1250-879-20210818", "images": {"dev": "1", "prod": NEW, "prodfr2": "3", "stage": "4"}}
APPLY = "ap_south.apply_change_request_ap_south"


class _TI:
    dag_id, run_id, task_id, map_index = "immutable_image_rollout", "rollout__x", "canary_soak.soak_gate", -1

    def __init__(self, xcoms=None):
        self.xcoms = {"build_verification.verify_build": BUILD, APPLY: {"promoted_at": "2026-11-25T10:00:00Z"},
                      **(xcoms or {})}
        self.pushed = {}

    def xcom_pull(self, task_ids=None, key="return_value", **_):
        return self.xcoms.get(task_ids) if key == "return_value" else self.pushed.get(key)

    def xcom_push(self, key, value):
        self.pushed[key] = value


def _context(ti=None):
    ti = ti or _TI()
    return {"ti": ti, "task_instance": mock.Mock(id="0193-ti"), "run_id": ti.run_id,
            "params": {"build_name": BUILD["name"]}}


def _soak_gate():
    return gate_operators.SoakGateOperator(task_id="soak_gate", region="ap-south", image_key="prod",
                                   promote_task_id=APPLY)


@pytest.fixture
def slack():
    with mock.patch("image_rollout.operators.base.notify") as notify:
        yield notify


def _channels(slack):
    return [(c.kwargs["channel"], c.args[0]) for c in slack.call_args_list]


def test_an_unreadable_soak_holds_and_escalates_once(slack):
    op, ctx = _soak_gate(), _context()
    event = {"verdict": "inconclusive", "reason": "ExternalSystemError: pagerduty 503",
             "unreadable_since": "2026-11-25T12:00:00Z", "unreadable_seconds": 0}
    with pytest.raises(TaskDeferred) as deferred:
        op.execute_complete(ctx, event)
    trigger = deferred.value.trigger
    assert trigger.escalated is True and trigger.unreadable_since == "2026-11-25T12:00:00Z"
    assert trigger.inconclusive_timeout == 120.0
    [(channel, text)] = _channels(slack)
    assert channel == "#sre-cfs-patching" and "HOLDING" in text and "Roll back" in text
    assert ctx["ti"].pushed["inconclusive"]["ask_at"] == "2026-11-25T12:02:00Z"
    assert "decision" not in ctx["ti"].pushed  # nothing for the rollback to act on


def test_after_the_timeout_the_gate_asks_roll_back_or_keep_waiting(slack):
    op, ctx = _soak_gate(), _context()
    event = {"verdict": "inconclusive_timeout", "reason": "pagerduty 503", "unreadable_since": "2026-11-25T12:00:00Z",
             "unreadable_seconds": 121.0}
    with mock.patch("airflow.sdk.execution_time.hitl.upsert_hitl_detail") as upsert, \
            pytest.raises(TaskAwaitingInput) as awaiting:
        op.execute_complete(ctx, event)
    kwargs = upsert.call_args.kwargs
    assert kwargs["options"] == ["Roll back", "Keep waiting"] and kwargs["defaults"] is None
    assert kwargs["ti_id"] == "0193-ti" and kwargs["multiple"] is False
    assert awaiting.value.method_name == "execute_decision" and awaiting.value.timeout is None
    assert awaiting.value.kwargs["resume"] == {"holding": False}
    [(channel, text)] = _channels(slack)
    assert channel == "#sre-cfs-patching" and text.startswith("Decision needed: ap-south")
    assert "/dags/immutable_image_rollout/runs/rollout__x/tasks/canary_soak.soak_gate/required_actions" in text


def _answer(option, user="sre-approver"):
    return {"chosen_options": [option], "params_input": {}, "responded_by_user": {"id": user, "name": user},
            "responded_at": datetime(2026, 11, 25, 14, 0, tzinfo=UTC)}


UNREADABLE = {"unreadable_since": "2026-11-25T12:00:00Z", "reason": "pagerduty 503", "unreadable_seconds": 121}


def test_roll_back_fails_the_gate_with_who_chose_it(slack):
    op, ctx = _soak_gate(), _context()
    with pytest.raises(AirflowFailException, match="sre-approver chose Roll back"):
        op.execute_decision(ctx, _answer("Roll back"), resume={"holding": False}, unreadable=UNREADABLE)
    decision = ctx["ti"].pushed["decision"]
    assert decision["verdict"] == "fail" and decision["decided_by"] == "sre-approver"
    assert ctx["ti"].pushed["inconclusive_decision"] == {"chosen": "Roll back", "by": "sre-approver",
                                                         "at": "2026-11-25T14:00:00+00:00"}


def test_keep_waiting_resumes_the_gate(slack):
    op, ctx = _soak_gate(), _context()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute_decision(ctx, _answer("Keep waiting"), resume={"holding": False}, unreadable=UNREADABLE)
    trigger = deferred.value.trigger
    assert isinstance(trigger, SoakTrigger) and trigger.escalated and trigger.unreadable_since
    assert "decision" not in ctx["ti"].pushed
    assert "chose Keep waiting" in _channels(slack)[0][1]


def test_an_answer_that_is_not_an_option_asks_again(slack):
    op, ctx = _soak_gate(), _context()
    with mock.patch("airflow.sdk.execution_time.hitl.upsert_hitl_detail"), pytest.raises(TaskAwaitingInput):
        op.execute_decision(ctx, _answer("Approve"), resume={"holding": False}, unreadable=UNREADABLE)
    assert "decision" not in ctx["ti"].pushed


def test_evidence_of_failure_still_fails_the_soak_at_once(slack):
    op, ctx = _soak_gate(), _context()
    event = {"verdict": "fail", "reason": "1 autorecovery_failed incident(s) during the soak", "figures": {}}
    with pytest.raises(AirflowFailException):
        op.execute_complete(ctx, event)
    assert ctx["ti"].pushed["decision"]["verdict"] == "fail"


def test_a_malformed_answer_fails_the_gate_at_once(slack):
    op, ctx = _soak_gate(), _context()
    with pytest.raises(AirflowFailException, match="malformed"):
        op.execute_complete(ctx, {"verdict": "error", "reason": "MalformedResponseError: x", "permanent": True})


def test_a_canary_not_serving_the_build_holds_and_says_why_once(slack):
    op, ctx = _soak_gate(), _context()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute_complete(ctx, {"verdict": "not_serving", "reason": "ap-south does not serve the build",
                                  "serves": {"prod": OLD}})
    assert deferred.value.trigger.holding is True and deferred.value.kwargs == {"holding": True}
    [(channel, text)] = _channels(slack)
    assert channel == "#sre-cfs-patching" and "HOLDS" in text and f"prod={OLD}" in text


def test_the_pass_records_since_and_the_figures(slack):
    op, ctx = _soak_gate(), _context()
    event = {"verdict": "pass", "reason": "12 autorecovery reloads", "figures": {"autorecovery_reloads": 12},
             "since": "2026-11-25T10:00:00Z", "decided_at": "2026-11-26T10:00:00Z"}
    result = op.execute_complete(ctx, event)
    assert result == {"region": "ap-south", "build": BUILD["name"], "image_map": BUILD["images"], "verdict": "pass",
                      "reason": "12 autorecovery reloads", "since": "2026-11-25T10:00:00Z",
                      "decided_at": "2026-11-26T10:00:00Z", "figures": {"autorecovery_reloads": 12}}


def test_the_soak_floors_are_the_promotion_and_a_recorded_rollback():
    rolled = {"rollout_end.rollback": {"rolled_back": [{"target": "ap-south", "restored": {}, "at": "2026-11-25T11:00:00Z"},
                                                       {"target": "ap-north", "restored": {}}]}}
    assert _soak_gate().floors(_context(_TI(rolled))) == ["2026-11-25T10:00:00Z", "2026-11-25T11:00:00Z"]
    # A rollback that did not record its time: the soak counts from now, never from before it.
    untimed = {"rollout_end.rollback": {"rolled_back": [{"target": "ap-south", "restored": {}}]}}
    floors = _soak_gate().floors(_context(_TI(untimed)))
    assert verdicts.parse_time(floors[1]) > verdicts.parse_time("2026-11-25T12:00:00Z")


def test_execute_defers_to_the_soak_trigger_with_no_deadline():
    with pytest.raises(TaskDeferred) as deferred:
        _soak_gate().execute(_context())
    trigger = deferred.value.trigger
    assert trigger.deadline is None and trigger.floors == ["2026-11-25T10:00:00Z"]
    assert trigger.image_map == BUILD["images"] and trigger.inconclusive_timeout == 120.0


def _reload_check():
    return gate_operators.ReloadCheckOperator(task_id="reload_check_dev_sjc04_carrier12", carrier="dev-sjc04-carrier12",
                                      image_key="dev", promote_task_id=APPLY)


def test_a_reload_check_whose_own_read_fails_holds_instead_of_retrying(slack):
    op, ctx = _reload_check(), _context()
    hook = mock.Mock()
    from image_rollout.hooks._http import ExternalSystemError

    hook.list_reloads.side_effect = ExternalSystemError(system="chlorine", call="GET", status=503, reason="down")
    with mock.patch.object(base, "chlorine_hook", return_value=hook), pytest.raises(TaskDeferred) as deferred:
        op.execute_complete(ctx, {"verdict": "deadline", "reason": "grace over"}, phase="grace")
    trigger = deferred.value.trigger
    assert trigger.unreadable_since and trigger.escalated is False and deferred.value.kwargs == {"phase": "grace"}
    hook.request_reload.assert_not_called()


@pytest.mark.parametrize("held", [False, True])
def test_a_held_build_asks_chlorine_for_no_reload(slack, monkeypatch, held):
    """After the grace period the gate asks chlorine for the missing reloads, unless the build is held
    (README "Hold one rollout": no write of the build while held); then it waits and says why."""
    import json

    hold = json.dumps({BUILD["name"]: {"by": "jdoe", "reason": "INC0099 dal10 alerts"}}) if held else None
    monkeypatch.setattr(base.Variable, "get",
                        staticmethod(lambda key, default=None: hold if key == "image_rollout_hold" else default))
    op, ctx = _reload_check(), _context()
    hook = mock.Mock()
    hook.list_reloads.return_value = []
    hook.request_reload.return_value = {"id": "r", "worker": "w", "change_id": "c"}
    with mock.patch.object(base, "chlorine_hook", return_value=hook), pytest.raises(TaskDeferred):
        op.execute_complete(ctx, {"verdict": "deadline", "reason": "grace over"}, phase="grace")
    assert hook.request_reload.call_count == (0 if held else 3)
    assert any("HELD" in text for _channel, text in _channels(slack)) is held


def test_a_reload_check_inconclusive_timeout_keeps_its_phase(slack):
    op, ctx = _reload_check(), _context()
    with mock.patch("airflow.sdk.execution_time.hitl.upsert_hitl_detail"), pytest.raises(TaskAwaitingInput) as aw:
        op.execute_complete(ctx, {"verdict": "inconclusive_timeout", **UNREADABLE}, phase="final")
    assert aw.value.kwargs["resume"] == {"phase": "final"}
    with pytest.raises(TaskDeferred) as deferred:
        op.execute_decision(ctx, _answer("Keep waiting"), resume={"phase": "final"}, unreadable=UNREADABLE)
    assert deferred.value.kwargs == {"phase": "final"}


def test_a_verdict_after_an_escalated_outage_closes_it_in_the_patching_channel(slack):
    op, ti = _soak_gate(), _TI()
    ti.pushed["inconclusive"] = {"unreadable_since": "2026-11-25T12:00:00Z", "reason": "503"}
    event = {"verdict": "pass", "reason": "12 autorecovery reloads", "figures": {}, "since": "2026-11-25T10:00:00Z"}
    op.execute_complete(_context(ti), event)
    assert ("#sre-cfs-patching", "ap-south: data readable again; the gate decided: pass.") in _channels(slack)
    assert ti.pushed["inconclusive"] is None
