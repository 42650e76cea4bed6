"""Test-wide Airflow environment: one embedded Airflow home (SQLite) under build/, set before
anything imports ``airflow``, and a session sandbox for the end-to-end scenarios."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: One Airflow home per pytest process (each xdist worker of each lane ``make test`` runs side by side):
#: each has its own SQLite DB and session sandbox.
_LANE = "-".join(filter(None, (os.environ.get("ROLLOUT_TEST_LANE"), os.environ.get("PYTEST_XDIST_WORKER")))) or "main"
HOME = ROOT / "build" / f"airflow-pytest-{_LANE}"
HOME.mkdir(parents=True, exist_ok=True)
for p in (str(ROOT / "plugins"), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)
# xdist workers inherit the controller's environment: a home the controller chose for itself (marked)
# is replaced by the worker's own; one the caller set is kept.
if os.environ.get("ROLLOUT_TEST_HOME_CHOSEN") == "1" and os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["AIRFLOW_HOME"] = str(HOME)
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{HOME}/airflow.db"
elif "AIRFLOW_HOME" not in os.environ and "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in os.environ:
    os.environ["ROLLOUT_TEST_HOME_CHOSEN"] = "1"
os.environ.setdefault("AIRFLOW_HOME", str(HOME))
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{HOME}/airflow.db")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
os.environ.setdefault("ROLLOUT_PLAN", "sandbox")


@pytest.fixture(scope="session")
def rollout_sandbox():
    """A sandbox on a free port and the embedded Airflow pointed at it (DB created once)."""
    from include.sandbox import serve_in_thread
    from tests.harness.scenario import prepare_airflow

    server, base_url = serve_in_thread(port=0)
    prepare_airflow(Path(os.environ["AIRFLOW_HOME"]), base_url)
    yield base_url
    server.shutdown()
