"""Real Airflow components as subprocesses of the venv: the stack behind ``make demo`` and ``make stack-test``.

Why not ``dag.test()``: only a real scheduler, triggerer, dag-processor and api-server (and a
Celery worker) show that deferred waits survive restarts, that the REST API refuses a second run
for a build, that the flag pool serialises writes and that a person can answer the HITL approval.
Every process this module starts is its own process group and is killed by pid on ``stop()``,
on an exception (context manager) and at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import urllib3
from airflow_client.client.exceptions import ApiException

from tests.harness.env import ROOT, airflow_env

VENV_BIN = ROOT / ".venv" / "bin" if (ROOT / ".venv" / "bin" / "airflow").exists() else Path(sys.executable).parent
AIRFLOW = str(VENV_BIN / "airflow")
DAG_ID = "immutable_image_rollout"
WATCHER_DAG_ID = "immutable_image_watcher"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
POSTGRES_ADMIN_URL = os.environ.get("STACK_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("STACK_REDIS_URL", "redis://127.0.0.1:6379")
#: Who does what over the REST API: the Jenkins job triggers, a person approves, admin sets up.
ROLES = {"admin": "admin", "jenkins": "user", "sre-approver": "user"}
TERMINAL_TI = {"success", "failed", "skipped", "upstream_failed", "removed"}
TERMINAL_RUN = {"success", "failed"}
WAITING_TI = {"deferred", "awaiting_input"}
#: What a poll may meet while the api-server is busy or restarting: look again instead of failing.
TRANSIENT = (OSError, ValueError, ApiException, urllib3.exceptions.HTTPError)


def flag_pool() -> str:
    """The pool name the flag writers use, from the DAG code itself (imported lazily: it pulls in airflow)."""
    from image_rollout.operators.base import FLAG_POOL

    return FLAG_POOL


def run_id_for(build_name: str) -> str:
    """The run id Jenkins uses for a build, from the DAG code itself."""
    from image_rollout.contracts import run_id_for as _run_id_for

    return _run_id_for(build_name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def state_str(value: Any) -> str | None:
    """Client enums (``TaskInstanceState.SUCCESS``) and plain strings alike, as the API's string."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


def ti_key(ti: Any) -> str:
    return ti.task_id + (f"[{ti.map_index}]" if ti.map_index is not None and ti.map_index >= 0 else "")


# -- PostgreSQL: one fresh database per stack ------------------------------------------------------


def _pg_admin():
    import psycopg2

    conn = psycopg2.connect(POSTGRES_ADMIN_URL, connect_timeout=10)
    conn.autocommit = True
    return conn


def create_database(prefix: str = "airflow_stack") -> tuple[str, str]:
    """Create an empty database; return ``(name, SQLAlchemy URL)``. Names are unique, so runs never share one."""
    name = f"{prefix}_{datetime.now(UTC):%Y%m%d%H%M%S}_{secrets.token_hex(3)}"
    conn = _pg_admin()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1)
    return name, f"{base}/{name}"


def drop_database(name: str) -> None:
    """Drop a database made by ``create_database`` (forcing out leftover connections)."""
    conn = _pg_admin()
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def drop_stale_databases(prefix: str = "airflow_stack", older_than_hours: float = 6) -> list[str]:
    """Drop databases an aborted run (SIGKILL, power cut) left behind; their names carry their creation time."""
    conn = _pg_admin()
    dropped = []
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{prefix}_%",))
            for (name,) in cur.fetchall():
                try:
                    made = datetime.strptime(name[len(prefix) + 1:][:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
                except ValueError:
                    continue
                if (datetime.now(UTC) - made).total_seconds() > older_than_hours * 3600:
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    dropped.append(name)
    finally:
        conn.close()
    return dropped


# -- REST: JWT from /auth/token, then the official client -------------------------------------------


class Rest:
    """One user's session on the api-server: a JWT from ``POST /auth/token``, then ``airflow_client.client``."""

    def __init__(self, base_url: str, username: str, password: str):
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self._client = None
        self._token_at = 0.0

    def token(self) -> str:
        body = json.dumps({"username": self.username, "password": self._password}).encode()
        req = urllib.request.Request(f"{self.base_url}/auth/token", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())["access_token"]

    @property
    def client(self):
        import airflow_client.client as ac

        if self._client is None or time.monotonic() - self._token_at > 1800:
            config = ac.Configuration(host=self.base_url, access_token=self.token())
            self._client = ac.ApiClient(config)
            self._token_at = time.monotonic()
        return self._client

    @property
    def dags(self):
        import airflow_client.client as ac

        return ac.DAGApi(self.client)

    @property
    def dag_runs(self):
        import airflow_client.client as ac

        return ac.DagRunApi(self.client)

    @property
    def task_instances(self):
        import airflow_client.client as ac

        return ac.TaskInstanceApi(self.client)

    @property
    def xcoms(self):
        import airflow_client.client as ac

        return ac.XComApi(self.client)


# -- the stack -------------------------------------------------------------------------------------

_LIVE: list[AirflowStack] = []


def _stop_on_sigterm() -> None:
    """A SIGTERM (CI timeout, ``kill``) skips atexit: stop the stacks first, then die of it as usual.

    Installed only where nobody else handles SIGTERM (the demo has its own handler).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def handler(signum, frame):
        for stack in list(_LIVE):
            with contextlib.suppress(Exception):
                stack.stop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)


class AirflowStack:
    """Scheduler, dag-processor, triggerer, api-server (+ Celery worker) from the venv, sharing one home.

    :param home: ``AIRFLOW_HOME``; component logs go to ``home/logs/<component>.log``.
    :param sandbox_url: the sandbox the rollout's connections point at.
    :param db_url: SQLAlchemy URL of the metadata DB; default SQLite in ``home`` (LocalExecutor,
        as ``airflow standalone`` runs it).
    :param executor: ``LocalExecutor`` (default) or ``CeleryExecutor`` (needs PostgreSQL and Redis).
    :param passwords: user -> password for the simple auth manager; random when not given.
    :param worker_concurrency: Celery worker processes, and ``[core] parallelism`` (LocalExecutor's
        worker processes): 4 keeps a 2-core machine responsive and the stack near 2.5 GB RSS.
    """

    def __init__(self, home: Path, sandbox_url: str, *, db_url: str | None = None, executor: str = "LocalExecutor",
                 api_port: int | None = None, api_host: str = "127.0.0.1", plan: str = "sandbox",
                 passwords: dict[str, str] | None = None, redis_db: int | None = None,
                 worker_concurrency: int = 4, extra_env: dict[str, str] | None = None):
        if executor == "CeleryExecutor" and (db_url is None or db_url.startswith("sqlite")):
            raise ValueError("CeleryExecutor needs a PostgreSQL metadata DB (its result backend lives there)")
        self.home = Path(home)
        self.logs = self.home / "logs"
        self.sandbox_url = sandbox_url
        self.db_url = db_url
        self.executor = executor
        self.api_port = api_port or free_port()
        self.api_host = api_host
        self.base_url = f"http://localhost:{self.api_port}"
        #: Where Slack (the sandbox's ``/_sandbox/slack/click``) sends button clicks: the image_rollout_slack plugin.
        self.slack_interaction_url = f"{self.base_url}/image-rollout/slack/interactions"
        self.plan = plan
        self.passwords = dict(passwords or {user: secrets.token_urlsafe(12) for user in ROLES})
        self.redis_db = redis_db if redis_db is not None else int(os.environ.get("STACK_REDIS_DB", "7"))
        self.queue = f"stack-{os.getpid()}-{secrets.token_hex(2)}"
        self.worker_concurrency = worker_concurrency
        self.extra_env = dict(extra_env or {})
        self.procs: dict[str, subprocess.Popen] = {}
        self.started_pids: list[int] = []
        self.restarts: dict[str, int] = {}
        self._rest: dict[str, Rest] = {}
        self._sampler: RssSampler | None = None
        self._stopped = False
        self.env = self._environment()
        atexit.register(self.stop)
        _LIVE.append(self)
        _stop_on_sigterm()

    # -- configuration ----------------------------------------------------------------------------
    @property
    def components(self) -> tuple[str, ...]:
        base = ("dag-processor", "scheduler", "triggerer", "api-server")
        return base + (("celery-worker",) if self.executor == "CeleryExecutor" else ())

    def _environment(self) -> dict[str, str]:
        """One configuration for every component: shared secrets, fast loops, this stack's ports and DB."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "ROLLOUT_PLAN"}
        env.update(airflow_env(self.home, self.sandbox_url, plan=self.plan, db_url=self.db_url))
        from cryptography.fernet import Fernet

        users = ",".join(f"{user}:{ROLES.get(user, 'user')}" for user in self.passwords)
        env.update({
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            # The watcher would start the same rollout on its own; the REST trigger is what's under test.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": users,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__CORE__PARALLELISM": str(self.worker_concurrency),
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "10",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API__HOST": self.api_host,
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__WORKER_TIMEOUT": "300",
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "20",
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "120",
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "600",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            # A killed triggerer's triggers go to the next one after this many seconds without a heartbeat.
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        })
        if self.executor == "CeleryExecutor":
            pg = self.db_url.split("://", 1)[1]
            env.update({
                "AIRFLOW__CELERY__BROKER_URL": f"{REDIS_URL}/{self.redis_db}",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{pg}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
                "AIRFLOW__CELERY__OPERATION_TIMEOUT": "10",
                "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
                # A queue of our own: another stack on the same Redis never takes our tasks.
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
            })
        env.update(self.extra_env)
        return env

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> AirflowStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, *, wait: bool = True, timeout: float = 420) -> None:
        """Migrate the DB, create the flag pool, start every component, wait until all are healthy."""
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps(self.passwords))
        (self.home / "passwords.json").chmod(0o600)
        self.cli("db", "migrate", log="db-migrate", timeout=900)
        self.cli("pools", "set", flag_pool(), "1", "Writers of the worker-image flag: one at a time",
                 log="pools-set", timeout=300)
        for name in self.components:
            self.start_component(name)
        self._sampler = RssSampler(self)
        self._sampler.start()
        if wait:
            self.wait_healthy(timeout=timeout)

    def cli(self, *args: str, log: str, timeout: float = 300) -> None:
        """Run one ``airflow`` CLI command to completion (same env); fail with the end of its log."""
        path = self.logs / f"{log}.log"
        with open(path, "ab") as out:
            proc = subprocess.Popen([AIRFLOW, *args], env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self.started_pids.append(proc.pid)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_tree(proc.pid, hard=True)
                raise RuntimeError(f"airflow {' '.join(args)} timed out after {timeout}s; see {path}") from None
        if rc != 0:
            raise RuntimeError(f"airflow {' '.join(args)} exited {rc}:\n{tail(path)}")

    def command(self, name: str) -> list[str]:
        if name == "api-server":
            return [AIRFLOW, "api-server", "--host", self.api_host, "--port", str(self.api_port), "--workers", "1"]
        if name == "celery-worker":
            return [AIRFLOW, "celery", "worker", "--concurrency", str(self.worker_concurrency), "--queues",
                    self.queue, "--skip-serve-logs", "--without-gossip", "--without-mingle",
                    "--celery-hostname", f"{self.queue}@%h"]
        return [AIRFLOW, name]

    def start_component(self, name: str) -> int:
        """Start (or restart) one component in its own process group; return its pid."""
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is already running (pid {self.procs[name].pid})")
        bind = self.api_host if self.api_host == "0.0.0.0" else "127.0.0.1"
        if name == "api-server" and not port_is_free(self.api_port, bind):
            raise RuntimeError(f"port {self.api_port} is taken: stop what listens there or choose another port")
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps writing to it
        out.write(f"\n===== start {name} at {datetime.now(UTC).isoformat()} =====\n".encode())
        out.flush()
        proc = subprocess.Popen(self.command(name), env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.procs[name] = proc
        self.started_pids.append(proc.pid)
        self.restarts[name] = self.restarts.get(name, -1) + 1
        return proc.pid

    def stop_component(self, name: str, *, hard: bool = False, grace: float = 20) -> None:
        """Stop one component: SIGKILL at once when ``hard`` (a crash), else SIGTERM, then SIGKILL after ``grace``."""
        proc = self.procs.get(name)
        if proc is None:
            return
        kill_tree(proc.pid, hard=hard, grace=grace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Kill everything this stack started, newest first, by pid (process group and descendants)."""
        if self._stopped:
            return
        self._stopped = True
        if self._sampler is not None:
            self._sampler.stop()
        order = ["celery-worker", "scheduler", "triggerer", "dag-processor", "api-server"]
        for name in sorted(self.procs, key=lambda n: order.index(n) if n in order else 0):
            with contextlib.suppress(Exception):
                self.stop_component(name, grace=15)
        for pid in reversed(self.started_pids):
            with contextlib.suppress(Exception):
                kill_tree(pid, hard=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    def check_alive(self) -> None:
        """Fail with the component's log tail as soon as one of them died on its own."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(self.logs / f'{name}.log')}")

    @property
    def peak_rss(self) -> dict:
        return self._sampler.peak if self._sampler else {}

    # -- health -----------------------------------------------------------------------------------
    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.base_url}/api/v2/monitor/health", timeout=10) as resp:
            return json.loads(resp.read())

    def wait_healthy(self, timeout: float = 420, components: Iterable[str] | None = None) -> dict:
        """Until the api-server answers and reports the named components (default all) healthy."""
        wanted = {"metadatabase", "scheduler", "triggerer", "dag_processor"}
        if components is not None:
            wanted = set(components)
        last: dict = {}

        def ready() -> bool:
            nonlocal last
            self.check_alive()
            try:
                last = self.health()
            except (OSError, ValueError):
                return False
            return all((last.get(c) or {}).get("status") == "healthy" for c in wanted)

        wait_for(ready, timeout=timeout, interval=1, what=lambda: f"healthy {sorted(wanted)}, last {last}")
        return last

    # -- REST -------------------------------------------------------------------------------------
    def rest(self, user: str = "admin") -> Rest:
        if user not in self._rest:
            self._rest[user] = Rest(self.base_url, user, self.passwords[user])
        return self._rest[user]

    def wait_dag(self, dag_id: str = DAG_ID, timeout: float = 300) -> None:
        """Until the dag-processor has serialized ``dag_id`` (the api-server then knows it)."""
        def parsed() -> bool:
            self.check_alive()
            try:
                self.rest().dags.get_dag(dag_id)
                return True
            except TRANSIENT:
                return False

        wait_for(parsed, timeout=timeout, interval=1, what=f"DAG {dag_id} parsed")

    def unpause(self, dag_id: str = DAG_ID) -> None:
        import airflow_client.client as ac

        self.rest().dags.patch_dag(dag_id, ac.DAGPatchBody(is_paused=False), update_mask=["is_paused"])

    def trigger_rollout(self, build_name: str, *, user: str = "jenkins"):
        """What the Jenkins job does: POST a run with ``dag_run_id`` from the build and the build in ``conf``.

        Raises ``airflow_client.client.exceptions.ApiException`` (status 409) when the build's run exists.
        """
        import airflow_client.client as ac

        body = ac.TriggerDAGRunPostBody(dag_run_id=run_id_for(build_name), logical_date=None,
                                        conf={"build_name": build_name})
        return self.rest(user).dag_runs.trigger_dag_run(DAG_ID, body)

    def curl_trigger(self, build_name: str, user: str = "jenkins") -> str:
        """The same trigger as shell commands (the password stays a variable, as in Jenkins credentials)."""
        body = json.dumps({"dag_run_id": run_id_for(build_name), "logical_date": None,
                           "conf": {"build_name": build_name}})
        return (
            f"TOKEN=$(curl -sf -X POST {self.base_url}/auth/token -H 'Content-Type: application/json' \\\n"
            f"  -d '{{\"username\": \"{user}\", \"password\": \"'\"$AIRFLOW_PASSWORD\"'\"}}' | jq -r .access_token)\n"
            f"curl -sf -X POST {self.base_url}/api/v2/dags/{DAG_ID}/dagRuns \\\n"
            f"  -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\\n"
            f"  -d '{body}'"
        )

    def dag_run(self, run_id: str):
        return self.rest().dag_runs.get_dag_run(DAG_ID, run_id)

    def task_instances(self, run_id: str) -> list:
        """Every task instance of the run (mapped ones included), paging through the API."""
        out: list = []
        api = self.rest().task_instances
        while True:
            page = api.get_task_instances(DAG_ID, run_id, limit=100, offset=len(out))
            out += list(page.task_instances)
            if not page.task_instances or len(out) >= page.total_entries:
                return out

    def task_states(self, run_id: str) -> dict[str, str | None]:
        return {ti_key(ti): state_str(ti.state) for ti in self.task_instances(run_id)}

    def task_instance(self, run_id: str, task_id: str, map_index: int = -1):
        api = self.rest().task_instances
        if map_index >= 0:
            return api.get_mapped_task_instance(DAG_ID, run_id, task_id, map_index)
        return api.get_task_instance(DAG_ID, run_id, task_id)

    def xcom(self, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        entry = self.rest().xcoms.get_xcom_entry(DAG_ID, task_id, run_id, key, map_index=map_index, deserialize=True)
        inner = getattr(entry, "actual_instance", entry)
        return getattr(inner, "value", inner)

    def pending_approvals(self, run_id: str, user: str = "sre-approver") -> list:
        """HITL requests of the run that nobody answered yet and whose task is parked waiting for one."""
        page = self.rest(user).task_instances.get_hitl_details(DAG_ID, run_id, response_received=False)
        return [d for d in page.hitl_details
                if state_str(d.task_instance.state) in WAITING_TI]

    def approve_pending(self, run_id: str, *, option: str = "Approve", user: str = "sre-approver") -> list[dict]:
        """Answer the open approval(s) as ``user`` through the HITL REST API, as a person in the UI would."""
        import airflow_client.client as ac

        answered = []
        api = self.rest(user).task_instances
        for detail in self.pending_approvals(run_id, user):
            ti = detail.task_instance
            resp = api.update_hitl_detail(DAG_ID, run_id, ti.task_id, ti.map_index,
                                          ac.UpdateHITLDetailPayload(chosen_options=[option]))
            answered.append({"task_id": ti.task_id, "subject": detail.subject, "chosen": resp.chosen_options,
                             "responded_by": {"id": resp.responded_by.id, "name": resp.responded_by.name},
                             "responded_at": resp.responded_at})
        return answered

    # -- waits ------------------------------------------------------------------------------------
    def wait_task(self, run_id: str, task_id: str, states: Iterable[str], *, timeout: float = 300,
                  map_index: int = -1) -> Any:
        """Until the task instance is in one of ``states``; returns it. Fails early if it ended otherwise."""
        wanted = set(states)
        seen: dict = {}

        def reached():
            self.check_alive()
            try:
                ti = self.task_instance(run_id, task_id, map_index)
            except TRANSIENT:  # not created yet (404) or a busy api-server: look again
                return None
            seen["state"] = state_str(ti.state)
            if seen["state"] in wanted:
                return ti
            if seen["state"] in TERMINAL_TI:
                raise AssertionError(f"{task_id} ended {seen['state']} while waiting for {sorted(wanted)}")
            return None

        return wait_for(reached, timeout=timeout, interval=1,
                        what=lambda: f"{task_id} in {sorted(wanted)} (now {seen.get('state')})")

    def wait_run(self, run_id: str, *, timeout: float = 900, on_poll: Callable[[list], None] | None = None,
                 interval: float = 2) -> str:
        """Until the run is success/failed; ``on_poll`` gets the run's task instances every ``interval`` s."""
        result: dict = {}

        def finished():
            self.check_alive()
            try:
                tis = self.task_instances(run_id)
                run_state = state_str(self.dag_run(run_id).state)
            except TRANSIENT:  # a busy or restarting api-server: look again
                return None
            if on_poll:
                on_poll(tis)
            result["state"] = run_state
            return run_state if run_state in TERMINAL_RUN else None

        return wait_for(finished, timeout=timeout, interval=interval,
                        what=lambda: f"run {run_id} finished (now {result.get('state')})")


# -- processes ---------------------------------------------------------------------------------------


def kill_tree(pid: int, *, hard: bool = False, grace: float = 20) -> None:
    """Stop a process and everything under it.

    Soft: SIGTERM to the process alone (Celery, uvicorn and the scheduler shut their own children
    down), then SIGKILL to its group and every descendant still there after ``grace`` seconds.
    Hard (a crash): SIGKILL to all of them at once. Descendants are collected first because some
    start sessions of their own and would escape a group kill.
    """
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    alive = procs
    if not hard and procs:
        with contextlib.suppress(psutil.Error):
            root.terminate()
        _gone, alive = psutil.wait_procs(procs, timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class RssSampler(threading.Thread):
    """Peak resident memory of the whole stack (sum over every process), sampled once a second."""

    def __init__(self, stack: AirflowStack, interval: float = 1.0):
        super().__init__(daemon=True, name="rss-sampler")
        self.stack = stack
        self.interval = interval
        self.peak: dict = {"rss_mb": 0.0, "processes": 0, "by_component_mb": {}, "at": None}
        self._stop_event = threading.Event()

    def sample(self) -> None:
        by_component: dict[str, float] = {}
        pss = 0
        count = 0
        for name, proc in list(self.stack.procs.items()):
            if proc.poll() is not None:
                continue
            try:
                root = psutil.Process(proc.pid)
                members = [root] + root.children(recursive=True)
            except psutil.Error:
                continue
            total = 0
            for member in members:
                with contextlib.suppress(psutil.Error):
                    info = member.memory_full_info()
                    total += info.rss
                    pss += getattr(info, "pss", info.rss)
                    count += 1
            by_component[name] = round(total / 2**20, 1)
        rss = round(sum(by_component.values()), 1)
        if rss > self.peak["rss_mb"]:
            # RSS counts pages shared by forked workers once per process; PSS splits them fairly.
            self.peak = {"rss_mb": rss, "pss_mb": round(pss / 2**20, 1), "processes": count,
                         "by_component_mb": by_component, "at": datetime.now(UTC).isoformat()}

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            with contextlib.suppress(Exception):
                self.sample()

    def stop(self) -> None:
        self._stop_event.set()


# -- small helpers -----------------------------------------------------------------------------------


def wait_for(check: Callable[[], Any], *, timeout: float, interval: float = 1.0, what: str | Callable[[], str] = "") -> Any:
    """Call ``check`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def redis_forget_queue(stack: AirflowStack) -> None:
    """Drop this stack's Celery queue from Redis (its name is unique, so nobody else's tasks are touched)."""
    import redis

    client = redis.Redis.from_url(f"{REDIS_URL}/{stack.redis_db}", socket_timeout=5)
    client.delete(stack.queue)


def tcp_open(host: str, port: int, timeout: float = 2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def service_address(url: str, default_port: int) -> tuple[str, int]:
    """(host, port) of a PostgreSQL or Redis URL."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def ensure_services(timeout: float = 60) -> None:
    """Start PostgreSQL and Redis the way this machine's docs say, if they are down; fail if they stay down.

    Only the local defaults are started here; a server named by ``STACK_POSTGRES_ADMIN_URL`` or
    ``STACK_REDIS_URL`` elsewhere must already run (waiting for it says which one did not answer).
    """
    starters = {
        service_address(POSTGRES_ADMIN_URL, 5432):
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -1) main start",
        service_address(REDIS_URL, 6379):
            ("redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no "
             "--dir /var/lib/redis --logfile /var/log/redis/ci.log"),
    }
    for (host, port), command in starters.items():
        if tcp_open(host, port):
            continue
        local = (host, port) in (("127.0.0.1", 5432), ("localhost", 5432), ("127.0.0.1", 6379), ("localhost", 6379))
        if local:
            subprocess.run(command, shell=True, check=False, timeout=timeout)
        wait_for(lambda h=host, p=port: tcp_open(h, p), timeout=timeout if local else 5, interval=1,
                 what=f"a service on {host}:{port}" + (f" (started with: {command})" if local else
                                                       " (named by STACK_POSTGRES_ADMIN_URL / STACK_REDIS_URL)"))


# -- a throwaway stack on a fresh PostgreSQL database (the live tests) --------------------------------


@contextlib.contextmanager
def fresh_stack(home: Path, sandbox_url: str, *, plan: str = "stack", executor: str = "LocalExecutor",
                db_prefix: str = "airflow_live", **kwargs: Any):
    """Start every component on a new PostgreSQL database; yield the healthy stack; stop it and drop the DB.

    Everything started is killed by pid (``AirflowStack.stop``) even when the body raises.
    """
    import shutil

    ensure_services()
    with contextlib.suppress(Exception):
        drop_stale_databases(db_prefix)
    db_name, db_url = create_database(db_prefix)
    if Path(home).exists():
        shutil.rmtree(home)
    stack = AirflowStack(home, sandbox_url, db_url=db_url, executor=executor, plan=plan, **kwargs)
    try:
        stack.start()
        stack.wait_dag(DAG_ID)
        stack.unpause(DAG_ID)
        yield stack
    finally:
        stack.stop()
        with contextlib.suppress(Exception):
            drop_database(db_name)
