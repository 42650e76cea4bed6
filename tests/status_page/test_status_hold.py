"""The status page shows a hold on a build (issue 11 item 3): who set it and why, escaped; a malformed
hold shows as holding, with its problem."""

from __future__ import annotations

import json

from rollout_status.status_data import assemble_run, held_builds, hold_of
from rollout_status.status_render import STATE_COLORS, render

from tests.status_page.test_status_data import NOW, PLAN, base_rows, html

BUILD = "533-1251-880-20211101"


def test_the_run_page_shows_who_held_the_build_and_why():
    raw = json.dumps({BUILD: {"by": "jdoe", "reason": "INC0099 <dal10> alerts", "since": "2026-01-02T11:00Z"}})
    run, states, xcoms = base_rows(BUILD)
    detail = assemble_run(PLAN, run, states, xcoms, now=NOW)
    detail["hold"] = hold_of(BUILD, raw)
    page = html(detail)
    assert "<strong>Held</strong> by jdoe since 2026-01-02T11:00Z: INC0099 &lt;dal10&gt; alerts" in page
    detail["hold"] = hold_of(BUILD, json.dumps({"534-1-1-20211201": {"by": "x", "reason": "y"}}))
    assert detail["hold"] is None and "<strong>Held</strong>" not in html(detail)


def test_a_malformed_hold_shows_as_holding_with_its_problem():
    hold = hold_of(BUILD, "hold everything")
    assert hold is not None and "not JSON" in hold["problem"] and hold["by"] is None
    holds = held_builds(json.dumps({BUILD: {"by": "jdoe"}}))
    page = render("runs.html", runs=[], plan_name="sandbox", now=NOW.isoformat(), refresh=None, error=None,
                  holds=holds, base="/rollout-status", airflow_root="", dag_id="immutable_image_rollout",
                  colors=STATE_COLORS, waiting=())
    assert f"build {BUILD} by jdoe (malformed: missing reason)" in page


def test_a_no_op_rerun_says_so_and_not_rollout_complete():
    run, states, xcoms = base_rows(BUILD)
    run["state"] = "success"
    xcoms[("build_verification.verify_build", -1, "return_value")] = {
        "name": BUILD, "dry_run": False,
        "noop": {"finished_by": "rollout__x", "finished_at": "t", "why": "run rollout__x finished the rollout at t"}}
    page = html(assemble_run(PLAN, run, states, xcoms, now=NOW))
    assert "No-op rerun</strong>: run rollout__x finished the rollout at t; this run wrote nothing" in page
    assert "Rollout complete" not in page
