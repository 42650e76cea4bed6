"""One real Airflow (scheduler, triggerer, dag-processor, api-server; LocalExecutor on a fresh PostgreSQL
database) and one sandbox for every live test of a pytest process; each test resets the sandbox and gets
its own run. ``make test`` runs the live tests on two xdist workers: two stacks side by side, nothing shared.

Plan ``stack``: the sandbox plan with a 40 s bake, long enough that a bake cut short is visible
(with the sandbox plan's 5 s, the approval alone outlasts the bake).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from tests.harness.env import BUILD
from tests.harness.operator_api import Operator, SandboxControl
from tests.harness.stack import fresh_stack
from tests.live.common import PLAN, Live


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.live)


def pytest_configure(config):
    config.addinivalue_line("markers", "live: a rollout on the real scheduler, driven over the REST API")


@pytest.fixture(scope="session")
def live_stack(request):
    from include.sandbox import serve_in_thread

    logging.getLogger("sandbox").setLevel(logging.WARNING)  # its request log would drown the failures
    started = time.monotonic()
    server, sandbox_url = serve_in_thread(port=0)
    try:
        # One stack per xdist worker (make test runs two side by side), each with its own home and database.
        home = BUILD / "-".join(filter(None, ("live-test", os.environ.get("PYTEST_XDIST_WORKER"))))
        with fresh_stack(home, sandbox_url, plan=PLAN) as stack:
            live = Live(stack, SandboxControl(sandbox_url), Operator.of(stack, "admin"),
                        Operator.of(stack, "jenkins"), Operator.of(stack, "sre-approver"))
            print(f"\n[live] stack up in {time.monotonic() - started:.0f}s")
            yield live
    finally:
        server.shutdown()
        print(f"\n[live] wall time {time.monotonic() - started:.0f}s")


@pytest.fixture
def live(live_stack):
    """The shared stack; whatever run the test started is ended (marked failed) afterwards."""
    started = time.monotonic()
    try:
        yield live_stack
    finally:
        live_stack.finish()
        print(f"\n[live] test took {time.monotonic() - started:.0f}s")
