"""The README's Jenkins trigger snippet, run by ``sh -e`` as Jenkins runs it, against a stand-in for the
api-server (``/auth/token`` and ``POST .../dagRuns``) that answers what a test tells it to.

Why: ``curl -sf`` turned the 409 "this build's rollout already started" into a red Jenkins job. The
snippet must keep the job green on 200 and 409 and red on anything else, and send the run id and conf
the DAG expects.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from image_rollout.contracts import ROLLOUT_DAG_ID as DAG_ID
from image_rollout.contracts import run_id_for

ROOT = Path(__file__).resolve().parents[2]
BUILD_NAME = "532-1250-879-20210818"

pytestmark = pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")),
                                reason="the README snippet needs curl and jq (as the Jenkins agent has)")


def jenkins_snippet() -> str:
    """The first bash block of the README's "From Jenkins" paragraph."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**From Jenkins (the normal path).**"):]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "no bash block after 'From Jenkins' in README.md"
    return match[1]


class StandIn(ThreadingHTTPServer):
    """Answers ``/auth/token`` (401 unless the password is right) and the trigger with ``trigger_status``."""

    def __init__(self, trigger_status: int):
        super().__init__(("127.0.0.1", 0), Handler)
        self.trigger_status = trigger_status
        self.requests: list[dict] = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.server.requests.append({"path": self.path, "body": body,
                                     "authorization": self.headers.get("Authorization")})
        if self.path == "/auth/token":
            ok = body == {"username": "jenkins", "password": "s3cret"}
            self._send(201 if ok else 401, {"access_token": "tok-123"} if ok else {"detail": "Invalid credentials"})
        elif self.path == f"/api/v2/dags/{DAG_ID}/dagRuns":
            status = self.server.trigger_status
            answer = {"dag_run_id": body.get("dag_run_id"), "state": "queued"} if status < 300 else {
                "detail": f"answer {status} of the stand-in"}
            self._send(status, answer)
        else:
            self._send(404, {"detail": "Not Found"})

    def _send(self, status: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def run_snippet(tmp_path: Path, url: str, *, password: str = "s3cret") -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "AIRFLOW_URL": url, "AIRFLOW_USER": "jenkins", "AIRFLOW_PASSWORD": password,
           "BUILD_NAME": BUILD_NAME, "BUILD_NUMBER": "1234"}
    # Jenkins runs a shell step as `sh -xe` (/bin/sh: dash on Debian agents): errexit on, as here.
    return subprocess.run(["sh", "-e", "-c", jenkins_snippet()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def stand_in(request):
    server = StandIn(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("stand_in", [200, 409], indirect=True)
def test_started_and_already_started_keep_the_job_green(stand_in, tmp_path):
    proc = run_snippet(tmp_path, f"http://127.0.0.1:{stand_in.server_port}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("already started" in proc.stdout) == (stand_in.trigger_status == 409), proc.stdout
    token, trigger = stand_in.requests
    assert token["path"] == "/auth/token"
    assert trigger["authorization"] == "Bearer tok-123"
    assert trigger["body"] == {"dag_run_id": run_id_for(BUILD_NAME), "logical_date": None,
                               "conf": {"build_name": BUILD_NAME, "build_number": 1234}}


@pytest.mark.parametrize("stand_in", [400, 403, 500, 503], indirect=True)
def test_any_other_answer_fails_the_job_and_shows_why(stand_in, tmp_path):
    proc = run_snippet(tmp_path, f"http://127.0.0.1:{stand_in.server_port}")
    assert proc.returncode != 0, proc.stdout
    assert f"HTTP {stand_in.trigger_status}" in proc.stdout
    assert f"answer {stand_in.trigger_status} of the stand-in" in proc.stdout


@pytest.mark.parametrize("stand_in", [200], indirect=True)
def test_a_wrong_password_fails_before_any_trigger(stand_in, tmp_path):
    proc = run_snippet(tmp_path, f"http://127.0.0.1:{stand_in.server_port}", password="wrong")
    assert proc.returncode != 0, proc.stdout
    assert [r["path"] for r in stand_in.requests] == ["/auth/token"]


def test_airflow_unreachable_fails_the_job(tmp_path):
    with StandIn(200) as server:  # bound, then closed: nothing listens on its port any more
        port = server.server_port
    proc = run_snippet(tmp_path, f"http://127.0.0.1:{port}")
    assert proc.returncode != 0, proc.stdout
