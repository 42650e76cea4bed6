"""Local stand-in for Jenkins, LaunchDarkly, GitHub Enterprise, chlorine, PagerDuty and Slack (see API.md).

Stdlib only, so `make sandbox` and the tests need nothing beyond Python.
"""

from __future__ import annotations

from include.sandbox.server import main, make_server, serve_in_thread

__all__ = ["main", "make_server", "serve_in_thread"]
