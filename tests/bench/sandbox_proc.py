"""The sandbox as a child process of the benchmark (its own interpreter: no GIL shared with Airflow)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.bench.common import BUILD, ROOT, free_port
from tests.harness.env import sandbox_call

# Every sandbox delay at zero; autorecovery and the report job need a period > 0 to happen at all,
# so they get the sandbox ticker's resolution (0.1 s).
ZERO_TIMING = {"reload_seconds": 0, "autorecovery_interval_seconds": 0.05, "approval_delay_seconds": 0,
               "report_interval_seconds": 0.1, "rebuild_seconds": 0}


class SandboxProcess:
    """``python -m include.sandbox --port <free> --quiet``; stopped (by its pid) on exit."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> SandboxProcess:
        BUILD.mkdir(parents=True, exist_ok=True)
        log = (BUILD / f"sandbox-{self.port}.log").open("w")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)])}
        self.proc = subprocess.Popen([sys.executable, "-m", "include.sandbox", "--port", str(self.port), "--quiet"],
                                     cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                sandbox_call(self.url, "/_sandbox/state", timeout=2)
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sandbox exited {self.proc.returncode}; see {log.name}") from None
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("sandbox did not start in 30 s")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def reset(self, timing: dict | None = None) -> None:
        sandbox_call(self.url, "/_sandbox/reset", {"timing": timing} if timing else {})

    def state(self) -> dict:
        return sandbox_call(self.url, "/_sandbox/state", timeout=30)
