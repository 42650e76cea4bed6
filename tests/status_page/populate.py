"""Fill an Airflow home of its own with one finished sandbox rollout, and dump the status data.

Run as ``python -m tests.status_page.populate HOME`` (a subprocess: the Airflow of the test
session is configured for another DB). Starts a sandbox on a free port, runs the whole rollout
in-process with the scenario harness, backs out dev-south
(``immutable_image_backout``), then writes ``HOME/status-result.json``: the run's outcome,
the sandbox's final state, and what the status page's data layer reads from the DB.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def main(home: Path) -> int:
    from tests.harness.env import ensure_sandbox
    from tests.harness.scenario import prepare_airflow, run_scenario

    shutil.rmtree(home, ignore_errors=True)
    server, base_url = ensure_sandbox(0)
    try:
        prepare_airflow(home, base_url)
        result = run_scenario(base_url, faults=[], conf=None)
        # then back out one target of it, so the run page has a backout to show
        build = result["conf"]["build_name"]
        backout = run_scenario(base_url, faults=[], reset=False, dag_id="immutable_image_backout",
                               conf={"build_name": build, "targets": ["dev-south"],
                                     "reason": "status page test: back out dev-south"})
    finally:
        if server is not None:
            server.shutdown()

    from airflow.utils.session import create_session
    from rollout_status.status_data import load_run, load_runs

    from image_rollout.plan import load_plan

    plan = load_plan()
    with create_session() as session:
        runs = load_runs(session, plan)
        detail = load_run(
            session, runs[0]["run_id"], plan, change_request_template="https://razee.example/{request_id}"
        )
    out = {
        "run_state": result["run_state"],
        "error": result["error"],
        "tasks": result["tasks"],
        "conf": result["conf"],
        "sandbox_state": result["state"],
        "runs": runs,
        "detail": detail,
        "base_url": base_url,
        "backout": {"run_state": backout["run_state"], "error": backout["error"], "tasks": backout["tasks"],
                    "flag_rules": backout["state"]["flag"]["rules"]},
    }
    (home / "status-result.json").write_text(json.dumps(out, indent=2, sort_keys=True))
    print(f"run {runs[0]['run_id']}: {result['run_state']} in {result['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
