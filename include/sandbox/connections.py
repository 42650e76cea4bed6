"""
Airflow connections that point every rollout hook at the sandbox.

The hooks read ordinary Airflow connections, so the sandbox is selected purely by
configuration: ``AIRFLOW_CONN_<ID>`` environment variables holding JSON connections whose
host is the sandbox's per-system prefix. The tokens are recognisable fakes
(``sandbox-secret-<system>``) so a test can assert that none of them leaks.

Usage (the Makefile): ``eval "$(python -m include.sandbox.connections http://127.0.0.1:8765)"``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

#: Retry settings for the sandbox: its transient faults clear after a few calls.
SANDBOX_RETRY_EXTRAS = {"timeout": 10, "retries": 4, "retry_wait": 0.2, "retry_max_wait": 2}


def fake_token(system: str) -> str:
    """Return the sandbox's fake credential for ``system``."""
    return f"sandbox-secret-{system}"


def slack_signing_secret() -> str:
    """The signing secret of the sandbox's Slack app: it signs the clicks it delivers (``$SANDBOX_SLACK_SIGNING_SECRET``)."""
    return os.environ.get("SANDBOX_SLACK_SIGNING_SECRET") or fake_token("slack-signing")


def sandbox_connections(base_url: str, *, retry_wait: float | None = None) -> dict[str, str]:
    """
    Return ``{AIRFLOW_CONN_<ID>: JSON connection}`` for every rollout connection, pointed at the sandbox.

    :param base_url: the sandbox's root URL, e.g. ``http://127.0.0.1:8765``.
    :param retry_wait: override the first retry backoff (tests use a few milliseconds).
    """
    base = base_url.rstrip("/")
    retry = dict(SANDBOX_RETRY_EXTRAS)
    if retry_wait is not None:
        retry["retry_wait"] = retry_wait
    connections: dict[str, dict[str, Any]] = {
        "JENKINS_DEFAULT": {
            "conn_type": "http",
            "description": "Jenkins (sandbox)",
            "host": f"{base}/jenkins",
            "login": "sandbox-rollout",
            "password": fake_token("jenkins"),
            "extra": retry,
        },
        "LAUNCHDARKLY_DEFAULT": {
            "conn_type": "http",
            "description": "LaunchDarkly / Razee flags (sandbox)",
            "host": f"{base}/launchdarkly",
            "password": fake_token("launchdarkly"),
            "extra": {
                **retry,
                "project_key": "default",
                "environment_key": "production",
                "flag_key": "worker-image",
            },
        },
        # The github provider's connection type: host is the API base URL (GitHub Enterprise
        # serves it under /api/v3). PyGithub's polite pauses between calls are off for the sandbox.
        "GITHUB_EVIDENCE_DEFAULT": {
            "conn_type": "github",
            "description": "GitHub Enterprise, evidence repository (sandbox)",
            "host": f"{base}/github/api/v3",
            "password": fake_token("github"),
            "extra": {
                **retry,
                "owner": "alchemy-conductors",
                "repo": "team",
                "branch": "master",
                "seconds_between_requests": 0,
                "seconds_between_writes": 0,
            },
        },
        "CHLORINE_DEFAULT": {
            "conn_type": "http",
            "description": "chlorine (sandbox)",
            "host": f"{base}/chlorine",
            "password": fake_token("chlorine"),
            "extra": retry,
        },
        "PAGERDUTY_DEFAULT": {
            "conn_type": "http",
            "description": "PagerDuty (sandbox)",
            "host": f"{base}/pagerduty",
            "password": fake_token("pagerduty"),
            "extra": {**retry, "service_id": "PM2KE3Q"},
        },
        "SLACK_API_DEFAULT": {
            "conn_type": "slack",
            "description": "Slack Web API (sandbox)",
            "password": fake_token("slack"),
            # signing_secret: the Slack app's, to verify the clicks Slack sends to the approval endpoint.
            "extra": {"base_url": f"{base}/slack/api/", "timeout": 10, "signing_secret": slack_signing_secret()},
        },
    }
    return {f"AIRFLOW_CONN_{name}": json.dumps(conn, sort_keys=True) for name, conn in connections.items()}


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def print_exports(base_url: str) -> None:
    """
    Print ``export AIRFLOW_CONN_...='<json>'`` lines for a shell to ``eval``.

    :param base_url: the sandbox's root URL.
    """
    for name, value in sandbox_connections(base_url).items():
        print(f"export {name}={_shell_quote(value)}")


def main(argv: list[str] | None = None) -> int:
    """Print the exports for the URL given as argument, else ``http://127.0.0.1:$SANDBOX_PORT``."""
    args = sys.argv[1:] if argv is None else argv
    base_url = args[0] if args else f"http://127.0.0.1:{os.environ.get('SANDBOX_PORT', '8765')}"
    print_exports(base_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
