"""The status page in a real ``airflow api-server`` (same SQLite DB as ``status_run``), opened in headless
Chromium: it loads, shows the finished sandbox rollout, and a screenshot is saved under build/."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.status_page.conftest import HOME, ROOT, clean_env

BUILD = ROOT / "build"
SCREENSHOT = BUILD / "status-page.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def api_server(status_run):
    """``airflow api-server`` on a free port over the rollout's DB; every process it starts is stopped."""
    from tests.harness.env import airflow_env

    port = free_port()
    env = clean_env()
    env.update(airflow_env(HOME, status_run["base_url"]))
    env.update(
        {
            "AIRFLOW__API_AUTH__JWT_SECRET": "status-page-test-secret",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
        }
    )
    log = (HOME / "api-server.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "airflow"),
            "api-server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"api-server exited {proc.returncode}: {(HOME / 'api-server.log').read_text()[-4000:]}"
                )
            try:
                if get(f"{base}/api/v2/monitor/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"api-server not up: {(HOME / 'api-server.log').read_text()[-4000:]}")
            time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it forked, by its process group
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    if CHROMIUM is None:
        pytest.skip("Debian package 'chromium' is not installed (apt-get install -y chromium)")
    profile = tmp_path / f"chromium-{time.monotonic_ns()}"
    proc = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def text_of(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_plugin_is_registered_in_the_api_server(api_server):
    status, body = get(f"{api_server}/api/v2/plugins")
    assert status == 200, body[:500]
    [plugin] = [p for p in json.loads(body)["plugins"] if p["name"] == "rollout_status"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/rollout-status"
    views = {v["destination"]: v for v in plugin["external_views"]}
    assert views["nav"]["href"] == "rollout-status/" and views["dag_run"]["url_route"] == "rollout-status-run"
    status, body = get(f"{api_server}/api/v2/plugins/importErrors")
    assert status == 200 and "rollout_status" not in body.decode(), body[:1000]


def test_json_endpoint_returns_the_run(api_server, status_run):
    run_id = status_run["detail"]["run_id"]
    status, body = get(f"{api_server}/rollout-status/api/runs/{quote(run_id, safe='')}")
    assert status == 200, body[:500]
    served = json.loads(body)
    expected = status_run["detail"]
    for key in ("build", "targets", "gates", "evidence", "adoption", "summary", "rollback"):
        if key == "targets":
            assert [{k: v for k, v in t.items() if k != "request_url"} for t in served[key]] == [
                {k: v for k, v in t.items() if k != "request_url"} for t in expected[key]
            ]
        else:
            assert served[key] == expected[key], key
    assert get(f"{api_server}/rollout-status/api/runs/no-such-run")[0] == 404


def test_status_pages_in_chromium(api_server, status_run, tmp_path):
    detail = status_run["detail"]
    build = detail["build"]["name"]
    run_url = f"{api_server}/rollout-status/runs/{quote(detail['run_id'], safe='')}"

    runs_dom = chromium(tmp_path, f"{api_server}/rollout-status/", "--dump-dom")
    assert build in runs_dom and "success" in runs_dom and "16/16" in text_of(runs_dom)
    assert f"/rollout-status/runs/{quote(detail['run_id'], safe='')}" in runs_dom

    dom = chromium(tmp_path, run_url, "--dump-dom")
    text = text_of(dom)
    assert f"Build {build}" in text and "Rollout complete" in text
    for target in status_run["sandbox_state"]["flag"]["rules"]:
        assert f"<strong>{target}</strong>" in dom, target
    assert text.count("success") >= 16 + 6
    adoption = detail["adoption"]
    assert f"{adoption['percent']}%" in text and f"{adoption['new']}/{adoption['total']}" in text
    for carrier in adoption["carriers"]:
        assert (
            carrier["name"] in text and f"{carrier['percent']}% · {carrier['new']}/{carrier['total']}" in text
        )
    for gate in (
        "Reloads on dev-sjc04-carrier12",
        "Bake after stage_south",
        "Prod approval for ap-south",
        "Canary soak in ap-south",
    ):
        assert gate in text
    for commit in status_run["sandbox_state"]["evidence"]["commits"]:
        assert commit["html_url"] in dom
    for request in status_run["sandbox_state"]["approval_requests"]:
        assert request["_id"] in text

    BUILD.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    chromium(tmp_path, run_url, f"--screenshot={SCREENSHOT}", "--window-size=1400,2000")
    assert SCREENSHOT.stat().st_size > 50_000
    chromium(
        tmp_path,
        f"{api_server}/rollout-status/",
        f"--screenshot={BUILD / 'status-page-runs.png'}",
        "--window-size=1400,500",
    )


def test_nav_entry_and_run_tab_in_the_airflow_ui(api_server, status_run, tmp_path):
    """The Airflow UI (React) shows the nav entry, and the run view's tab embeds the run's status page."""
    home = chromium(tmp_path, f"{api_server}/", "--dump-dom", "--virtual-time-budget=20000")
    # the nav entry: a link (rendered by Chakra as a button with href) opening the page in a new tab
    assert re.search(r'<(?:a|button)[^>]*href="rollout-status/"[^>]*>.*?Rollout status', home, re.S), home[
        -3000:
    ]

    run_id = quote(status_run["detail"]["run_id"], safe="")
    tab = f"{api_server}/dags/immutable_image_rollout/runs/{run_id}/plugin/rollout-status-run"
    dom = chromium(tmp_path, tab, "--dump-dom", "--virtual-time-budget=20000")
    assert re.search(
        rf'<iframe[^>]*src="[^"]*rollout-status/dags/immutable_image_rollout/runs/{re.escape(run_id)}"', dom
    ), dom[-3000:]
    shot = BUILD / "status-page-in-airflow.png"
    shot.unlink(missing_ok=True)
    chromium(tmp_path, tab, f"--screenshot={shot}", "--window-size=1400,1000", "--virtual-time-budget=20000")
    assert shot.stat().st_size > 20_000
