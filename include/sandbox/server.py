"""HTTP front of the sandbox: routes each path prefix to its system, injects the faults, logs one line a request.

The log line never carries a header (hooks send real-looking credentials) nor a credential-like
query parameter.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from include.sandbox import chlorine, control, flags, github, jenkins, pagerduty, slack
from include.sandbox.core import Sandbox, SandboxError
from include.sandbox.web import Request, Response, json_response, text_response

log = logging.getLogger("sandbox")

Handler = Callable[[Sandbox, Request], Response]

#: path prefix -> (system name used in `calls` and faults, handler)
SYSTEMS: dict[str, tuple[str | None, Handler]] = {
    "/jenkins": ("jenkins", jenkins.handle),
    "/launchdarkly": ("flags", flags.handle),
    "/github": ("github", github.handle),
    "/chlorine": ("chlorine", chlorine.handle),
    "/pagerduty": ("pagerduty", pagerduty.handle),
    "/slack": ("slack", slack.handle),
    "/_sandbox": (None, control.handle),
}
_SECRET_WORDS = ("token", "key", "secret", "password", "auth", "signature")


def injected_fault(sb: Sandbox, system: str, method: str) -> tuple[str, Response] | None:
    """The fault (name, response) that rejects this call, if any; spends one use of a transient fault."""
    write = method in ("POST", "PUT", "PATCH", "DELETE")
    if system == "jenkins" and sb.consume_fault("jenkins_5xx"):
        return "jenkins_5xx", text_response("<html><body><h2>HTTP ERROR 503 Service Unavailable</h2></body></html>",
                                            503, "text/html; charset=utf-8")
    if system == "flags":
        if sb.consume_fault("flags_5xx"):
            return "flags_5xx", json_response({"code": "service_unavailable", "message": "Service Unavailable"}, 503)
        if write and sb.consume_fault("flags_conflict"):
            return "flags_conflict", json_response(
                {"code": "conflict", "message": "Your edit conflicts with a concurrent change; reload and retry"}, 409)
    if system == "github":
        if sb.consume_fault("github_5xx"):
            return "github_5xx", json_response({"message": "Server Error"}, 502)
        if method == "PUT" and sb.consume_fault("github_conflict"):
            return "github_conflict", json_response(
                {"message": "is at a different commit: the branch moved, fetch and retry",
                 "documentation_url": "https://docs.github.com/rest/repos/contents"}, 409)
    if system == "pagerduty" and sb.has_fault("pagerduty_5xx"):
        return "pagerduty_5xx", json_response({"error": {"message": "Internal Server Error", "code": 2000}}, 500)
    if system == "slack" and sb.has_fault("slack_down"):
        return "slack_down", json_response({"ok": False, "error": "service_unavailable"}, 503)
    return None


#: system -> the methods whose next successful call a `<system>_lost_response` fault swallows.
LOST_RESPONSE_WRITES = {"flags": ("POST", "PATCH", "DELETE"), "github": ("PUT",), "jenkins": ("POST",)}


def lost_response(sb: Sandbox, system: str, method: str, resp: Response) -> str | None:
    """The lost-response fault to spend on this carried-out write, if one is armed."""
    if method not in LOST_RESPONSE_WRITES.get(system, ()) or resp.status >= 300:
        return None
    name = f"{system}_lost_response"
    return name if sb.consume_fault(name) else None


def dispatch(sb: Sandbox, req_path: str, req: Request) -> tuple[Response, str | None]:
    """Route one request under the state lock; returns the response and the fault that answered, if any.

    A fault ending in `_lost_response` means the write was carried out and no answer may be sent.
    """
    if req_path == "/_sandbox/slack/click" and req.method == "POST":
        return _slack_click(sb, req), None
    for prefix, (system, handler) in SYSTEMS.items():
        if req_path == prefix or req_path.startswith(prefix + "/"):
            req.path = req_path[len(prefix):] or "/"
            with sb.lock:
                sb.advance()
                if system is not None:
                    key = f"{system} {req.method}"
                    fault = injected_fault(sb, system, req.method)
                    if fault is not None:
                        sb.faulted_calls[key] += 1
                        return fault[1], fault[0]
                    sb.calls[key] += 1
                resp = handler(sb, req)
                # Encode while holding the lock: bodies may reference live state.
                resp.body, resp.content_type = resp.encode()
                lost = lost_response(sb, system, req.method, resp) if system is not None else None
                if lost is not None:
                    sb.faulted_calls[f"{system} {req.method}"] += 1
                return resp, lost
    if req_path in ("", "/"):
        return json_response({"ok": True, "service": "image-rollout-sandbox", "systems": list(SYSTEMS)}), None
    return json_response({"error": f"no system at {req_path}", "systems": list(SYSTEMS)}, 404), None


def _slack_click(sb: Sandbox, req: Request) -> Response:
    """A click built and signed under the lock, delivered without it: the app answers back into the sandbox."""
    try:
        with sb.lock:
            click = slack.build_click(sb, req.json(), req.base_url)
    except SandboxError as exc:
        return json_response({"ok": False, "error": exc.message}, exc.status)
    result = slack.deliver(click)
    return json_response(result, 200 if result["ok"] else 502)


def _redacted_query(query: str) -> str:
    if not query:
        return ""
    pairs = parse_qs(query, keep_blank_values=True)
    safe = [(k, "***" if any(w in k.lower() for w in _SECRET_WORDS) else v) for k, vs in pairs.items() for v in vs]
    return "?" + urlencode(safe, safe="[]:,*")


class SandboxRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "image-rollout-sandbox/1"
    server: SandboxServer

    def setup(self) -> None:
        """No Nagle: a small response must not wait ~40 ms for the client's delayed ACK."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        started = time.monotonic()
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        req = Request(
            method="GET" if self.command == "HEAD" else self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            base_url=f"http://{host}",
        )
        fault = None
        try:
            resp, fault = dispatch(self.server.sandbox, parts.path.rstrip("/") or "/", req)
        except Exception as exc:  # the sandbox must answer, not drop the connection
            log.error("sandbox error on %s %s:\n%s", self.command, parts.path, traceback.format_exc())
            resp = json_response({"error": f"sandbox internal error: {exc}"}, 500)
        if fault is not None and fault.endswith("_lost_response"):
            # The write was carried out; the connection closes before any answer (the ambiguous write).
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            log.info('%s "%s %s" carried out, connection closed fault=%s', self.client_address[0], self.command,
                     parts.path, fault)
            return
        payload, ctype = resp.encode()
        self.send_response(resp.status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        ms = (time.monotonic() - started) * 1000
        suffix = f" fault={fault}" if fault else ""
        log.info('%s "%s %s%s" %d %.1fms%s', self.client_address[0], self.command, parts.path,
                 _redacted_query(parts.query), resp.status, ms, suffix)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        """Silence http.server's own line (it would duplicate ours); errors still reach the log."""
        if args and str(args[0]).startswith(("code 4", "code 5")):
            log.warning(format, *args)


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        super().__init__(address, SandboxRequestHandler)
        self.sandbox = sandbox

    def stop(self) -> None:
        """Stop serving (when serve_forever runs in another thread), the ticker, and close the socket."""
        self.shutdown()
        self.sandbox.stop()
        self.server_close()


def make_server(port: int | None = None, host: str | None = None, timing: dict | None = None) -> SandboxServer:
    """A bound server with a fresh seeded sandbox (ticker running); port None -> $SANDBOX_PORT or 8765."""
    if port is None:
        port = int(os.environ.get("SANDBOX_PORT") or 8765)
    host = host or os.environ.get("SANDBOX_HOST") or "127.0.0.1"
    return SandboxServer((host, port), Sandbox(timing))


def serve_in_thread(port: int = 0, timing: dict | None = None) -> tuple[SandboxServer, str]:
    """Run a sandbox in a daemon thread (port 0 = a free one), for tests: returns (server, base_url)."""
    server = make_server(port, timing=timing)
    thread = threading.Thread(target=server.serve_forever, name="sandbox-http", daemon=True)
    thread.start()
    host, bound = server.server_address[:2]
    return server, f"http://{host}:{bound}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.sandbox",
        description="Local stand-in for Jenkins, LaunchDarkly, GitHub, chlorine, PagerDuty and Slack "
        "(contract: include/sandbox/API.md).",
    )
    parser.add_argument("--port", type=int, default=None, help="default: $SANDBOX_PORT or 8765")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s sandbox %(message)s")
    try:
        server = make_server(args.port)
    except OSError as exc:
        print(f"sandbox: cannot listen on port {args.port or os.environ.get('SANDBOX_PORT') or 8765}: {exc}",
              file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    # `make sandbox` may be stopped with SIGTERM: leave through the same clean path as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"sandbox: listening on http://{host}:{port} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("sandbox: stopped", file=sys.stderr, flush=True)
    finally:
        server.sandbox.stop()
        server.server_close()
    return 0
