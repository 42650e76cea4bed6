"""ChlorineHook against the sandbox's chlorine: reloads and reload history."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from image_rollout.hooks._http import ExternalSystemError
from image_rollout.hooks.chlorine import ChlorineHook

PREVIOUS_DEV = "8495980"


@pytest.fixture
def chlorine(sandbox) -> ChlorineHook:
    return ChlorineHook()


def test_list_carriers(chlorine):
    carriers = {c["name"]: c for c in chlorine.list_carriers()}
    assert carriers["dev-sjc04-carrier12"]["region"] == "dev-sjc04-carrier12"
    assert carriers["prod-par04-carrier1"]["image_key"] == "prodfr2"
    assert {c["region"] for c in carriers.values() if c["name"].startswith("prod-syd")} == {"ap-south"}
    assert carriers["stgiks-dal10-carrier0"]["workers"]


def test_request_reload_and_follow_it(chlorine, wait_for):
    reload = chlorine.request_reload("dev-sjc04-carrier12", reason="test 533-1251-880-20211101")
    assert re.fullmatch(r"CHG\d{7}", reload["change_id"])
    assert reload["status"] == "pending"
    assert reload["worker"].startswith("dev-sjc04-carrier12-worker-")

    def finished():
        reloads = chlorine.list_reloads(carrier="dev-sjc04-carrier12", kind="requested")
        return [r for r in reloads if r["id"] == reload["id"] and r["status"] != "pending"]

    (done,) = wait_for(finished)
    assert done["status"] == "succeeded"
    assert done["image_id"] == PREVIOUS_DEV
    assert done["change_id"] == reload["change_id"]


def test_request_reload_of_a_named_worker(chlorine):
    worker = chlorine.list_carriers()[0]["workers"][0]
    worker = worker["name"] if isinstance(worker, dict) else worker
    carrier = worker.rsplit("-worker-", 1)[0]
    assert chlorine.request_reload(carrier, worker=worker, reason="named")["worker"] == worker


def test_reload_fail_fault(chlorine, sandbox, wait_for):
    sandbox.faults("reload_fail:prestage-mon01-carrier1")
    reload = chlorine.request_reload("prestage-mon01-carrier1", reason="will fail")
    done = wait_for(
        lambda: [
            r
            for r in chlorine.list_reloads(carrier="prestage-mon01-carrier1", kind="requested")
            if r["id"] == reload["id"] and r["status"] != "pending"
        ]
    )
    assert done[0]["status"] == "failed"


def test_list_reloads_filters(chlorine, wait_for):
    start = datetime.now(UTC) - timedelta(seconds=1)
    autorecovery = wait_for(
        lambda: chlorine.list_reloads(region="ap-south", since=start, kind="autorecovery")
    )
    assert {r["carrier"] for r in autorecovery} <= {"prod-syd01-carrier4", "prod-syd04-carrier2"}
    assert all(r["kind"] == "autorecovery" for r in autorecovery)
    assert chlorine.list_reloads(since=datetime.now(UTC) + timedelta(hours=1)) == []
    with pytest.raises(ValueError):
        chlorine.list_reloads(kind="manual")


def test_a_4xx_names_system_call_and_status(chlorine, secrets):
    with pytest.raises(ExternalSystemError) as info:
        chlorine.request_reload("no-such-carrier", reason="x")
    error = info.value
    assert error.system == "chlorine"
    assert error.call == "POST /api/v1/reloads"
    assert error.status is not None and 400 <= error.status < 500
    assert not any(secret in str(error) for secret in secrets)
