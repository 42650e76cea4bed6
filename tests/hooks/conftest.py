"""
Fixtures for the hook tests: an in-process sandbox reached over real HTTP, and tiny stub servers.

The hooks find their connections in ``AIRFLOW_CONN_*`` environment variables built by
``include.sandbox.connections``, exactly as a deployment pointed at the sandbox would.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Airflow reads its home on import; keep it out of the developer's ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-hooks-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import pytest  # noqa: E402
import requests  # noqa: E402

from include.sandbox.connections import sandbox_connections  # noqa: E402

#: Compressed sandbox timing for the hook tests (seconds).
FAST_TIMING = {
    "reload_seconds": 0.2,
    "autorecovery_interval_seconds": 0.2,
    "approval_delay_seconds": 0.5,
    "report_interval_seconds": 0.5,
    "rebuild_seconds": 0.3,
}
SECRETS = [
    f"sandbox-secret-{s}" for s in ("jenkins", "launchdarkly", "github", "chlorine", "pagerduty", "slack")
]


def _wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """``wait_for(predicate, timeout=10)``: poll until truthy, fail the test on timeout."""
    return _wait_for


@pytest.fixture
def secrets() -> list[str]:
    """The sandbox connections' fake credentials: none may ever show in an error or a log."""
    return list(SECRETS)


class Sandbox:
    """Client for the sandbox's control endpoints."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def reset(self, **timing: float) -> None:
        response = requests.post(
            f"{self.base_url}/_sandbox/reset", json={"timing": {**FAST_TIMING, **timing}}, timeout=10
        )
        response.raise_for_status()

    def faults(self, *names: str) -> None:
        response = requests.post(f"{self.base_url}/_sandbox/faults", json={"faults": list(names)}, timeout=10)
        response.raise_for_status()

    def state(self) -> dict[str, Any]:
        response = requests.get(f"{self.base_url}/_sandbox/state", timeout=10)
        response.raise_for_status()
        return response.json()

    def calls(self, key: str) -> int:
        """Return how many calls the sandbox served for ``"<system> <METHOD>"`` (faulted ones apart)."""
        return int(self.state().get("calls", {}).get(key, 0))

    def faulted(self, key: str) -> int:
        """Return how many ``"<system> <METHOD>"`` calls an injected fault answered."""
        return int(self.state().get("faulted_calls", {}).get(key, 0))


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[str]:
    """Start one sandbox for the session on a free port and return its base URL."""
    from include.sandbox import serve_in_thread

    server, base_url = serve_in_thread(port=0)
    try:
        yield base_url
    finally:
        server.stop()


@pytest.fixture
def sandbox(sandbox_server: str, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """Reset the sandbox with fast timing and point every ``*_default`` connection at it."""
    for name, value in sandbox_connections(sandbox_server, retry_wait=0.01).items():
        monkeypatch.setenv(name, value)
    sandbox = Sandbox(sandbox_server)
    sandbox.reset()
    return sandbox


Responder = Callable[[str, str, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]


@pytest.fixture
def stub_server() -> Iterator[Callable[[Responder], str]]:
    """
    Start throwaway HTTP servers answering with a function; return a starter giving the base URL.

    The function gets ``(method, path_with_query, headers, body)`` and returns
    ``(status, headers, body)``, or None to close the connection without an answer (a lost
    response: whatever the function did has happened).
    """
    servers: list[ThreadingHTTPServer] = []

    def start(respond: Responder) -> str:
        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                answer = respond(self.command, self.path, dict(self.headers), body)
                if answer is None:
                    self.close_connection = True
                    return
                status, headers, payload = answer
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def stub_connection(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``stub_connection(conn_id, host, **fields)``: define a connection via ``AIRFLOW_CONN_*``."""

    def define(conn_id: str, host: str, **fields: Any) -> None:
        conn = {"conn_type": "http", "host": host, **fields}
        conn.setdefault("extra", {"retries": 2, "retry_wait": 0.01, "timeout": 5})
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))

    return define
