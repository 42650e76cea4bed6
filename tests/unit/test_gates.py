from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from image_rollout import gates

NEW, OLD = "8935101", "8495980"
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def reload(worker, status="succeeded", image=NEW, change="CHG5530645"):
    return {"worker": worker, "status": status, "image_id": image, "change_id": change}


def test_three_reloads_with_the_new_image_pass():
    d = gates.evaluate_reloads([reload(f"w-{i}") for i in range(3)], image_id=NEW, required=3, max_failed=0)
    assert d.verdict == "pass"
    assert [r["worker"] for r in d.figures["reloads"]] == ["w-0", "w-1", "w-2"]


def test_reloads_with_the_old_image_do_not_count():
    d = gates.evaluate_reloads([reload("w-0"), reload("w-1"), reload("w-2", image=OLD)], image_id=NEW,
                               required=3, max_failed=0)
    assert d.verdict == "wait"
    assert d.figures["succeeded_with_new_image"] == 2 and d.figures["other_image"] == 1


def test_the_same_worker_twice_is_one_machine():
    d = gates.evaluate_reloads([reload("w-0"), reload("w-0"), reload("w-1")], image_id=NEW, required=3,
                               max_failed=0)
    assert d.verdict == "wait"


def test_a_failed_reload_with_the_new_image_fails_the_gate():
    d = gates.evaluate_reloads([reload("w-0"), reload("w-1"), reload("w-9", status="failed")], image_id=NEW,
                               required=3, max_failed=0)
    assert d.verdict == "fail" and "w-9" in d.reason


def test_pending_reloads_do_not_count():
    d = gates.evaluate_reloads([reload("w-0", status="pending")], image_id=NEW, required=1, max_failed=0)
    assert d.verdict == "wait"


def test_malformed_reload_is_an_error_not_a_pass():
    with pytest.raises(ValueError, match="missing"):
        gates.evaluate_reloads([{"worker": "w"}], image_id=NEW, required=1, max_failed=0)


def soak(reloads, incidents=(), now=T0 + timedelta(hours=24), **kw):
    args = dict(reloads=reloads, incidents=incidents, image_id=NEW, started_at=T0, now=now,
                min_duration=24 * 3600, min_reloads=10, timeout=72 * 3600, incident_title="autorecovery_failed")
    args.update(kw)
    return gates.evaluate_soak(**args)


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
    assert gates.is_newer("533-1251-880-20211101", "532-1250-879-20210818")
    assert gates.is_newer("532-1250-880-20210818", "532-1250-879-20210818")
    assert not gates.is_newer("999-1-1-20200101", "532-1250-879-20210818")


# -- the soak counts from the canary's latest promotion (issue 9 item 1) ---------------------------------
def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _request(rule_id, applied, status="completed"):
    return {"_id": f"cr-{applied}", "status": status, "appliedDate": _ms(applied) if applied else None,
            "instructions": [{"kind": "updateRuleVariationOrRollout", "ruleId": rule_id, "variationId": "v1"}]}


def test_the_soak_counts_from_the_latest_applied_change_of_the_rule():
    requests = [_request("r-ap-south", T0), _request("r-ap-south", T0 + timedelta(hours=3)),
                _request("r-ap-north", T0 + timedelta(hours=5)), _request("r-ap-south", None, status="pending")]
    assert gates.latest_rule_change(requests, "r-ap-south") == T0 + timedelta(hours=3)
    assert gates.soak_since(requests, "r-ap-south") == T0 + timedelta(hours=3)


def test_a_later_recorded_change_wins_over_an_older_applied_request():
    # Under approvals-not-required a rollback is a direct write with no appliedDate: its recorded time
    # (and this run's own promotion time) are floors the soak never counts from before.
    requests = [_request("r-ap-south", T0)]
    rollback_at = (T0 + timedelta(hours=1)).isoformat()
    assert gates.soak_since(requests, "r-ap-south", [None, rollback_at]) == T0 + timedelta(hours=1)
    assert gates.soak_since(requests, "r-ap-south", [(T0 - timedelta(hours=1)).isoformat()]) == T0


def test_no_known_promotion_is_no_soak_start():
    assert gates.soak_since([], "r-ap-south") is None
    assert gates.soak_since([{"appliedDate": True, "instructions": [{"ruleId": "r-ap-south"}]}], "r-ap-south") is None


def test_reloads_before_the_latest_promotion_never_pass_the_soak():
    """After a rollback and a re-promotion, the soak measured from the new promotion has not run long enough."""
    repromoted = T0 + timedelta(hours=30)
    since = gates.soak_since([_request("r", T0), _request("r", repromoted)], "r")
    d = gates.evaluate_soak(reloads=[], incidents=[{"title": "autorecovery_failed", "created_at": T0.isoformat()}],
                            image_id=NEW, started_at=since, now=repromoted + timedelta(hours=1), min_duration=86400,
                            min_reloads=10, timeout=3 * 86400, incident_title="autorecovery_failed")
    assert d.verdict == "wait"  # the incident before the re-promotion is not counted
