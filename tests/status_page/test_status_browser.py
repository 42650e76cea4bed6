"""The status page in a real ``airflow api-server`` (same SQLite DB as ``status_run``), opened in headless
Chromium: it loads, shows the finished sandbox rollout, and a screenshot is saved under build/."""

from __future__ import annotations

import contextlib
import html
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


class DevTools:
    """Headless Chromium driven over the DevTools protocol (``--remote-debugging-port``, websockets): one
    page at a fixed viewport, and JavaScript evaluated in it. Only for what ``--dump-dom`` cannot tell:
    where things are laid out."""

    def __init__(self, tmp_path: Path, width: int, height: int):
        if CHROMIUM is None:
            pytest.skip("Debian package 'chromium' is not installed (apt-get install -y chromium)")
        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / f'cdp-{time.monotonic_ns()}'}",
             "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            url = None
            deadline = time.monotonic() + 60
            while url is None and time.monotonic() < deadline:
                line = self.proc.stderr.readline()
                if not line and self.proc.poll() is not None:
                    break
                if "DevTools listening on " in line:
                    url = line.split("DevTools listening on ", 1)[1].strip()
            assert url, "chromium did not open its DevTools port"
            self.ws = connect(url, max_size=None, open_timeout=30)
            self._id = 0
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, page=True)
        except BaseException:
            self.close()
            raise

    def call(self, method: str, params: dict | None = None, *, page: bool = False) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            answer = json.loads(self.ws.recv(timeout=60))
            if answer.get("id") == self._id:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return answer.get("result") or {}

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url}, page=True)

    def wait_value(self, expression: str, timeout: float = 60):
        """Evaluate ``expression`` in the page until it returns something other than null."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, page=True)
            value = (result.get("result") or {}).get("value")
            if value is not None:
                return value
            assert time.monotonic() < deadline, f"no value from {expression[:200]} in {timeout}s"
            time.sleep(0.5)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=20)


#: Where the Targets table's columns end, in the document ``doc`` (the page, or the run tab's iframe).
TARGETS_TABLE_EDGE = """
((doc, view) => {
  if (!doc || doc.readyState !== "complete") return null;
  const heading = [...doc.querySelectorAll("h2")].find(h => h.textContent.trim() === "Targets");
  if (!heading) return null;
  let table = heading.nextElementSibling;
  while (table && table.tagName !== "TABLE" && !table.querySelector("table")) table = table.nextElementSibling;
  if (table && table.tagName !== "TABLE") table = table.querySelector("table");
  if (!table) return null;
  const rights = [...table.querySelectorAll("tr > :last-child")].map(c => c.getBoundingClientRect().right);
  return {viewport: view.innerWidth, lastHeader: table.querySelector("thead th:last-child").textContent.trim(),
          lastRight: Math.max(...rights), tableRight: table.getBoundingClientRect().right, rows: rights.length,
          scrollWidth: doc.documentElement.scrollWidth, clientWidth: doc.documentElement.clientWidth};
})(%s)
"""


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
    added = ("request_url", "backed_out")  # the live request link, and what a later backout restored
    for key in ("build", "targets", "gates", "evidence", "adoption", "summary", "rollback"):
        if key == "targets":
            assert [{k: v for k, v in t.items() if k not in added} for t in served[key]] == [
                {k: v for k, v in t.items() if k not in added} for t in expected[key]
            ]
        elif key == "summary":  # populate's backout restored dev-south since
            assert served[key] == {**expected[key], "serving_new": expected[key]["serving_new"] - 1}
        else:
            assert served[key] == expected[key], key
    assert served["backed_out"] == ["dev-south"]
    assert [t["target"] for t in served["targets"] if t["backed_out"]] == ["dev-south"]
    assert get(f"{api_server}/rollout-status/api/runs/no-such-run")[0] == 404


def test_unknown_run_page_is_404_and_lists_the_runs_there_are(api_server, status_run):
    status, body = get(f"{api_server}/rollout-status/runs/no-such-run")
    text = html.unescape(text_of(body.decode()))
    assert status == 404 and "has no run 'no-such-run'" in text, text[:2000]
    assert "No runs" not in text, text[:2000]  # there is one: it is listed to pick from
    assert status_run["detail"]["build"]["name"] in text


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


@pytest.mark.parametrize("where", ["page", "run tab"])
def test_targets_table_fits_1600_px(api_server, status_run, tmp_path, where):
    """At a 1600 px wide window the Targets table's last column (Evidence) is inside the viewport, on the
    page itself and in the run view's tab of the Airflow UI (an iframe beside the grid)."""
    run_id = quote(status_run["detail"]["run_id"], safe="")
    browser = DevTools(tmp_path, 1600, 1000)
    try:
        if where == "page":
            browser.open(f"{api_server}/rollout-status/runs/{run_id}")
            edge = browser.wait_value(TARGETS_TABLE_EDGE % "document, window")
        else:
            browser.open(f"{api_server}/dags/immutable_image_rollout/runs/{run_id}/plugin/rollout-status-run")
            frame = 'document.querySelector("iframe[src*=\'rollout-status\']")'
            edge = browser.wait_value(TARGETS_TABLE_EDGE % f"{frame}?.contentDocument, {frame}?.contentWindow",
                                      timeout=90)
            edge["frame"] = browser.wait_value(f"(() => {{ const r = {frame}.getBoundingClientRect(); "
                                               "return {left: r.left, right: r.right, window: innerWidth}; })()")
            assert edge["frame"]["right"] <= edge["frame"]["window"] + 0.5, edge
    finally:
        browser.close()
    assert edge["lastHeader"] == "Evidence" and edge["rows"] == 1 + len(status_run["detail"]["targets"]), edge
    assert edge["lastRight"] <= edge["viewport"] + 0.5, f"the last column ends past the viewport: {edge}"
    assert edge["scrollWidth"] <= edge["clientWidth"], f"the page scrolls sideways: {edge}"


def test_a_hold_and_a_backout_in_chromium(api_server, status_run, tmp_path):
    """Issue 11: the run page shows the build's hold (who, why; set as an SRE would, with the Variable) and
    the backout ``populate`` ran (dev-south restored, by whom, why)."""
    from tests.harness.env import airflow_env

    backout = status_run["backout"]
    assert backout["run_state"] == "success", backout
    detail = status_run["detail"]
    build = detail["build"]["name"]
    hold = {build: {"by": "sre-lead", "reason": "INC0042 <dal10> alerts", "since": "2026-11-26T04:00Z"}}
    env = clean_env()
    env.update(airflow_env(HOME, status_run["base_url"]))

    def variables(*args: str) -> None:
        proc = subprocess.run([str(Path(sys.executable).parent / "airflow"), "variables", *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]

    variables("set", "image_rollout_hold", json.dumps(hold))
    try:
        run_url = f"{api_server}/rollout-status/runs/{quote(detail['run_id'], safe='')}"
        text = html.unescape(text_of(chromium(tmp_path, run_url, "--dump-dom")))
        assert "Held by sre-lead since 2026-11-26T04:00Z: INC0042 <dal10> alerts" in text, text[:2000]
        assert f"Nothing of build {build} is written while it is held" in text
        assert "Backout" in text and "status page test: back out dev-south" in text, text[:3000]
        assert "dev-south restored to" in text
        assert "Backed out since: dev-south" in text and "backed out to" in text  # the table says it too
        runs_text = html.unescape(text_of(chromium(tmp_path, f"{api_server}/rollout-status/", "--dump-dom")))
        assert f"build {build} by sre-lead: INC0042 <dal10> alerts" in runs_text
        chromium(tmp_path, run_url, f"--screenshot={BUILD / 'status-page-hold-backout.png'}",
                 "--window-size=1400,1600")
    finally:
        variables("delete", "image_rollout_hold")
