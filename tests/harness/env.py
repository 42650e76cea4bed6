"""Environment for an embedded Airflow pointed at the sandbox: set before ``airflow`` is imported."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"


def airflow_env(home: Path, base_url: str, *, plan: str = "sandbox", db_url: str | None = None) -> dict[str, str]:
    """Variables for an Airflow using the sandbox plan and connections, with its home at ``home``."""
    sys.path[:0] = [p for p in (str(ROOT / "plugins"), str(ROOT)) if p not in sys.path]
    from include.sandbox.connections import sandbox_connections

    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # INFO: task logs say what each task read, decided and wrote (the Slack messages link them).
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
        "ROLLOUT_PLAN": plan,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **sandbox_connections(base_url),
    }
    if db_url:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = db_url
    else:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home}/airflow.db"
    return env


def sandbox_call(base_url: str, path: str, body: dict | None = None, timeout: float = 10) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base_url}{path}", data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


def ensure_sandbox(port: int):
    """Reuse a sandbox already listening on ``port``, else start one in this process."""
    base_url = f"http://127.0.0.1:{port}"
    try:
        sandbox_call(base_url, "/_sandbox/state", timeout=2)
        return None, base_url
    except OSError:
        pass
    from include.sandbox import serve_in_thread

    server, url = serve_in_thread(port=port)
    for _ in range(50):
        try:
            sandbox_call(url, "/_sandbox/state", timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    return server, url
