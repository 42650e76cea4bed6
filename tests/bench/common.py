"""Shared helpers of the benchmark parts: paths, statistics, subprocess plumbing."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "bench"
RESULT_PREFIX = "BENCH-RESULT "


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_child(fn) -> dict:
    """Run ``fn()`` in a forked child and return its JSON-able result (a fresh copy of this process)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            payload = json.dumps(fn())
        except BaseException as exc:  # report, never fall back into the parent's code
            payload = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        with os.fdopen(write_fd, "w") as out:
            out.write(payload)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as src:
        data = src.read()
    os.waitpid(pid, 0)
    return json.loads(data or '{"error": "child died"}')


def emit(result: dict) -> None:
    """Hand a part's result to ``__main__`` (one marked line on stdout)."""
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result, sort_keys=True), flush=True)


def run_part(module: str, args: list[str] | None = None, *, timeout: float = 900, env: dict | None = None) -> dict:
    """Run ``python -m tests.bench.<module>`` in a fresh interpreter and return its result JSON.

    The part's own output goes to ``build/bench/<module>.log``; the result is the last marked line.
    """
    BUILD.mkdir(parents=True, exist_ok=True)
    log_path = BUILD / f"{module}.log"
    started = time.monotonic()
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "plugins"), str(ROOT), full_env.get("PYTHONPATH", "")])
    with log_path.open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", f"tests.bench.{module}", *(args or [])],
            cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout, check=False,
        )
        log.write(proc.stdout)
    result: dict = {}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    if proc.returncode != 0 or not result:
        result.setdefault("error", f"tests.bench.{module} exited {proc.returncode}; see {log_path}")
    result["part_seconds"] = round(time.monotonic() - started, 1)
    return result
