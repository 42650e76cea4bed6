"""One finished sandbox rollout in an Airflow home of the status-page tests (build/airflow-status-test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "build" / "airflow-status-test"


def clean_env() -> dict[str, str]:
    """This process's environment without the test session's Airflow settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "ROLLOUT_PLAN"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "plugins"), str(ROOT)])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.fixture(scope="session")
def status_run() -> dict:
    """Run one whole rollout (sandbox, dag.test) into HOME's SQLite DB; return what it recorded."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.status_page.populate", str(HOME)],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"populating {HOME} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    result = json.loads((HOME / "status-result.json").read_text())
    result["home"] = str(HOME)
    return result
