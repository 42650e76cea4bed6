"""What the live tests share: task ids, the plan's timings, and ``Live``: the stack, the sandbox and the
three people acting on a rollout. The fixtures are in ``conftest.py``.

Plan ``stack``: the sandbox plan with a 40 s bake, long enough that a bake cut short is visible
(with the sandbox plan's 5 s, the approval alone outlasts the bake).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tests.harness.env import ROOT
from tests.harness.operator_api import Operator, SandboxControl
from tests.harness.stack import run_id_for, wait_for

PLAN = "stack"
BAKE = "bake.wait_bake"
SOAK = "canary_soak.soak_gate"
APPROVE = "ap_south.approve_ap_south"
APPLY_AP_SOUTH = "ap_south.apply_change_request_ap_south"
FILE_AP_SOUTH = "ap_south.file_change_request_ap_south"
ROLLBACK = "rollout_end.rollback"
VERIFY = "build_verification.verify_build"
PATCHING = "#sre-cfs-patching"
REMAINING_PROD = ("ap-north", "eu-central", "uk-south", "us-east", "us-south", "br-sao", "ca-tor", "jp-osa",
                  "eu-fr2")
#: A person answers a HITL request seconds after it appears, not within the same second: an answer that
#: arrives before the scheduler has processed the executor's event for the worker that parked the task
#: races Airflow 3.3.2's scheduler ("finished with state success, but the task instance's state attribute
#: is queued") and fails the approval task. So answers wait ANSWER_AFTER seconds after the request was
#: created *and* PARKED_SETTLE seconds after the task was first seen parked (awaiting_input): under load
#: (CI: two cores, the parallel lane beside) the first alone was not enough.
ANSWER_AFTER = 4.0
PARKED_SETTLE = 5.0
VARIABLES = ("image_rollout_active_build", "image_rollout_freeze", "image_rollout_override")
#: How long the sandbox must hear nothing before the next test may reset it: longer than a task's heartbeat
#: (when a task of an ended run learns it is to stop).
QUIET_SECONDS = 8


def plan_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if not match:
        raise ValueError(f"not a duration: {value!r}")
    return float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def plan_json() -> dict:
    return json.loads((ROOT / "include" / "plans" / f"{PLAN}.json").read_text())


def bake_seconds() -> float:
    return plan_seconds(next(s for s in plan_json()["stages"] if s["kind"] == "bake")["wait"])


def parse_time(value) -> datetime:
    if isinstance(value, int | float):  # LaunchDarkly's epoch milliseconds
        return datetime.fromtimestamp(value / 1000, UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclass
class Live:
    """The shared stack, the sandbox and the three people who act on a rollout."""

    stack: object
    sandbox: SandboxControl
    admin: Operator
    jenkins: Operator
    approver: Operator
    runs: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    #: (run id, task id, map index) -> monotonic time the request was first seen parked
    parked: dict = field(default_factory=dict)

    def build(self) -> str:
        return self.sandbox.state()["builds"]["new"]

    def start(self, reset: dict | None = None, *, before_trigger=None) -> str:
        """Reset the sandbox (``reset`` is the reset body), clear the rollout's Variables, trigger as ``jenkins``."""
        self.sandbox.reset(reset or {})
        for key in VARIABLES:
            self.admin.delete_variable(key)
        if before_trigger:
            before_trigger()
        build = self.build()
        # Each test its own run id (Jenkins would send ``rollout__<build>``): deleting a run the scheduler
        # is still working on crashes Airflow 3.3.2's scheduler (ObjectDeletedError), so runs are only ended.
        run_id = f"{run_id_for(build)}__{len(self.started)}"
        self.started.append(run_id)
        status, body = self.jenkins.trigger(run_id, {"build_name": build})
        assert status in (200, 201), f"trigger answered {status}: {body}"
        self.runs.append(run_id)
        return run_id

    def finish(self) -> None:
        for run_id in self.runs:
            with contextlib.suppress(Exception):
                self.admin.end_run(run_id)
        self.runs.clear()
        with contextlib.suppress(Exception):
            self.sandbox.clear_faults()
        self.wait_quiet()

    def wait_quiet(self, *, timeout: float = 90) -> None:
        """Wait until no task of an ended run still calls the sandbox. Ending a run kills its running tasks
        only at their next heartbeat, and a write already under way still lands: under load one landed after
        the next test had reset the sandbox (a dev-sjc04-carrier12 promotion in a no-op rerun's state)."""
        last, since = None, time.monotonic()

        def quiet():
            nonlocal last, since
            calls = self.sandbox.state()["calls"]
            if calls != last:
                last, since = calls, time.monotonic()
            return time.monotonic() - since >= QUIET_SECONDS

        wait_for(quiet, timeout=timeout, interval=1, what=f"{QUIET_SECONDS}s without a call to the sandbox")

    def approve_if_asked(self, run_id: str) -> list[dict]:
        """Answer the prod-start approval as the assigned approver (only requests that offer "Approve")."""
        answered = []
        for detail in self.approver.pending_hitl(run_id):
            ti = detail["task_instance"]
            if "Approve" not in (detail.get("options") or []) or not self.settled(run_id, detail):
                continue
            status, body = self.approver.answer_hitl(run_id, ti["task_id"], "Approve", map_index=ti["map_index"])
            answered.append({"task_id": ti["task_id"], "status": status, "body": body})
        return answered

    def settled(self, run_id: str, detail: dict) -> bool:
        """Whether a person may answer ``detail`` now (see ANSWER_AFTER and PARKED_SETTLE)."""
        ti = detail["task_instance"]
        first = self.parked.setdefault((run_id, ti["task_id"], ti["map_index"]), time.monotonic())
        return asked_for(detail) >= ANSWER_AFTER and time.monotonic() - first >= PARKED_SETTLE

    def wait_settled(self, run_id: str, detail: dict, *, timeout: float = 60) -> None:
        """Wait, as a person reading the request, until it is safe to answer ``detail``."""
        ti = detail["task_instance"]

        def ready():
            for d in self.approver.pending_hitl(run_id):
                same = (d["task_instance"]["task_id"], d["task_instance"]["map_index"]) == (
                    ti["task_id"], ti["map_index"])
                if same and self.settled(run_id, d):
                    return True
            return None

        wait_for(ready, timeout=timeout, interval=0.5, what=f"{ti['task_id']} parked for {PARKED_SETTLE}s")

    def drive(self, run_id: str, until, *, timeout: float, approve: bool = True, interval: float = 1.0,
              what: str = "") -> dict:
        """Poll the sandbox (and answer approvals as ``sre-approver``) until ``until(state, tis)`` is true."""
        seen: dict = {}

        def done():
            self.stack.check_alive()
            if approve:
                with contextlib.suppress(Exception):
                    self.approve_if_asked(run_id)
            try:
                states = self.admin.task_states(run_id)
            except Exception:
                return None
            state = self.sandbox.state()
            seen.update(state=state, tis=states, run=self.admin.run_state(run_id))
            return state if until(state, states) else None

        try:
            return wait_for(done, timeout=timeout, interval=interval, what=what or "the rollout to get there")
        except TimeoutError as exc:
            bad = {k: v for k, v in (seen.get("tis") or {}).items() if v not in ("success", "skipped", None)}
            raise TimeoutError(f"{exc}; run {seen.get('run')}, unfinished tasks {bad}") from None


def asked_for(detail: dict) -> float:
    """Seconds since a HITL request was created."""
    created = detail.get("created_at")
    return (datetime.now(UTC) - parse_time(created)).total_seconds() if created else ANSWER_AFTER


def promotions(state: dict, target: str) -> list[dict]:
    return [p for p in state["promotions"] if p["target"] == target]


def slack_texts(state: dict, channel: str | None = None) -> list[str]:
    return [m["text"] for m in state["slack"] if channel is None or m["channel"] == channel]
