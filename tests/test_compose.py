"""The compose deployment: structure, and consistency with requirements.txt, the hooks and the DAGs.

Docker is not available where these tests run, so they read docker-compose.yaml,
docker-compose.sandbox.yaml and the Dockerfile as data. Where a Compose v2 CLI is on the PATH,
``test_compose_cli_accepts_the_files`` also lets Compose itself load them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
SANDBOX_OVERLAY = ROOT / "docker-compose.sandbox.yaml"
DOCKERFILE = ROOT / "Dockerfile"
REQUIREMENTS = ROOT / "requirements.txt"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
SANDBOX_API = ROOT / "include" / "sandbox" / "API.md"
CONTAINER_ROOT = "/opt/airflow"

# The core stack: started by a plain `docker compose up`.
CORE_AIRFLOW = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
AIRFLOW_SERVICES = (*CORE_AIRFLOW, "airflow-init")
# Opt-in extras built on the same x-airflow-common block.
PROFILED_AIRFLOW = {"airflow-cli": "debug", "flower": "flower"}
ALL_AIRFLOW = (*AIRFLOW_SERVICES, *PROFILED_AIRFLOW)

# Connection -> sandbox path prefix (include/sandbox/API.md).
SANDBOX_PREFIXES = {
    "AIRFLOW_CONN_JENKINS_DEFAULT": "/jenkins",
    "AIRFLOW_CONN_LAUNCHDARKLY_DEFAULT": "/launchdarkly",
    "AIRFLOW_CONN_GITHUB_EVIDENCE_DEFAULT": "/github",
    "AIRFLOW_CONN_CHLORINE_DEFAULT": "/chlorine",
    "AIRFLOW_CONN_PAGERDUTY_DEFAULT": "/pagerduty",
    "AIRFLOW_CONN_SLACK_API_DEFAULT": "/slack",
}
SANDBOX_URL = "http://sandbox:8765"
FLAG_POOL = "worker_image_flag"

# Passwords that may appear literally: the documented local PostgreSQL default. The sandbox
# overlay carries only the sandbox's fake tokens (include/sandbox/connections.py).
ALLOWED_LITERAL_PASSWORDS = {"", "airflow"}
SANDBOX_FAKE_TOKEN = "sandbox-secret-"

_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
_SECRET_KEY = re.compile(r"(PASSWORD|SECRET|SECRET_KEY|FERNET_KEY|TOKEN|API_KEY|PRIVATE_KEY)$")
_TOKEN_SHAPES = re.compile(
    r"xox[abprs]-|gh[pousr]_[A-Za-z0-9]{16,}|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY"
)
_LONG_RUN = re.compile(r"[A-Za-z0-9+/_=-]{32,}")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def overlay() -> dict:
    return _load(SANDBOX_OVERLAY)


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _expand(value: str) -> str:
    """Interpolate as Compose would with nothing set: defaults apply, ``:?`` variables count as empty."""

    def one(match: re.Match) -> str:
        return match["arg"] if match["op"] in (":-", "-") else ""

    return _INTERPOLATION.sub(one, value).replace("$$", "$")


def _whole_interpolation(value: str) -> re.Match | None:
    return _INTERPOLATION.fullmatch(value)


def _pins() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def _host_path(container_path: str, service: dict) -> Path:
    """Map a path inside the Airflow containers to the repo through the service's bind mounts."""
    for volume in service["volumes"]:
        source, target = _expand(volume).split(":")[:2]
        if container_path == target or container_path.startswith(target + "/"):
            return ROOT / source / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not under a mounted folder")


def _string_scalars(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _string_scalars(value)
    elif isinstance(node, list):
        for value in node:
            yield from _string_scalars(value)
    elif isinstance(node, str):
        yield node


def _hook_conn_vars() -> set[str]:
    """``AIRFLOW_CONN_*`` names of the ``default_conn_name``s the project's hooks declare."""
    names = set()
    for path in (ROOT / "plugins").rglob("*.py"):
        for conn_id in re.findall(r"default_conn_name\s*[:=][^=\n]*?[\"'](\w+)[\"']", path.read_text()):
            names.add(f"AIRFLOW_CONN_{conn_id.upper()}")
    return names


def _referenced_pools() -> set[str]:
    """Pool names in the DAG code: ``pool="x"`` arguments and ``..._POOL = "x"`` constants."""
    pools = set()
    for folder in ("dags", "plugins"):
        for path in (ROOT / folder).rglob("*.py"):
            pools.update(re.findall(r"(?:\bpool|_POOL)\s*=\s*[\"']([\w.-]+)[\"']", path.read_text()))
    for path in (ROOT / "include" / "plans").glob("*.json"):
        pools.update(re.findall(r"\"pool\"\s*:\s*\"([\w.-]+)\"", path.read_text()))
    return pools - {"default_pool"}


def test_services_exist(services: dict) -> None:
    for name in ("postgres", "redis", *AIRFLOW_SERVICES):
        assert name in services, f"service {name} missing"
        assert not services[name].get("profiles"), f"{name} must start without a profile"
    assert services["sandbox"]["profiles"] == ["sandbox"], "the sandbox starts only with --profile sandbox"
    for name, profile in PROFILED_AIRFLOW.items():
        assert services[name]["profiles"] == [profile]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"] == "redis:7.2-bookworm"
    commands = {name: services[name].get("command") for name in CORE_AIRFLOW}
    assert commands == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
        "airflow-worker": "celery worker",
    }


@pytest.mark.parametrize("name", ALL_AIRFLOW)
def test_celery_executor_on_postgres_and_redis(services: dict, name: str) -> None:
    env = _env(services[name])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    db = urlsplit(_expand(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]))
    assert db.scheme.startswith("postgresql") and db.hostname == "postgres", db
    backend = urlsplit(_expand(env["AIRFLOW__CELERY__RESULT_BACKEND"]))
    assert backend.scheme.startswith("db+postgresql") and backend.hostname == "postgres", backend
    broker = urlsplit(_expand(env["AIRFLOW__CELERY__BROKER_URL"]))
    assert broker.scheme == "redis" and broker.hostname == "redis", broker
    execution_api = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert execution_api.hostname == "airflow-apiserver" and execution_api.path == "/execution/"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"


@pytest.mark.parametrize("name", ALL_AIRFLOW)
def test_project_folders_are_mounted(services: dict, name: str) -> None:
    mounts = {}
    for volume in services[name]["volumes"]:
        source, target = _expand(volume).split(":")[:2]
        mounts[target] = source
    for folder in ("dags", "plugins", "include"):
        assert mounts.get(f"{CONTAINER_ROOT}/{folder}") == f"./{folder}", f"{name} does not mount ./{folder}"
        assert (ROOT / folder).is_dir()


def test_one_image_and_one_set_of_shared_secrets(services: dict) -> None:
    images = {
        (services[name]["image"], json.dumps(services[name]["build"], sort_keys=True)) for name in ALL_AIRFLOW
    }
    images.add((services["sandbox"]["image"], json.dumps(services["sandbox"]["build"], sort_keys=True)))
    assert len(images) == 1, f"Airflow services and the sandbox must share one image: {images}"
    build = services["airflow-worker"]["build"]
    assert build["context"] == "." and build.get("dockerfile", "Dockerfile") == "Dockerfile"

    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY"):
        values = {_env(services[name]).get(key) for name in ALL_AIRFLOW}
        assert len(values) == 1, f"{key} differs between services: {values}"
        (value,) = values
        match = _whole_interpolation(value or "")
        assert match and match["op"] == ":?", f"{key} must come from a required variable, got {value!r}"


def test_dockerfile_base_matches_the_pins() -> None:
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert len(froms) == 1, froms
    match = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)", froms[0])
    assert match, f"unexpected base image {froms[0]}"
    pins = _pins()
    assert match[1] == pins["apache-airflow"] == pins["apache-airflow-core"]
    requires_python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert re.search(r">=\s*" + re.escape(match[2]) + r"\b", requires_python), requires_python
    text = DOCKERFILE.read_text()
    assert re.search(r"^COPY\b.*\brequirements\.txt\b", text, flags=re.MULTILINE)
    assert re.search(r"^RUN pip install\b.*-r\s+\S*requirements\.txt", text, flags=re.MULTILINE)


def test_celery_is_pinned_to_the_working_version() -> None:
    pins = _pins()
    # celery 5.7.0 breaks apache-airflow-providers-celery 3.26.0 (docs/deploy.md: the image's pins).
    assert pins["celery"] == "5.6.3"
    assert "apache-airflow-providers-celery" in pins
    assert "redis" in pins and "psycopg2-binary" in pins


def test_every_connection_is_passed_through(services: dict) -> None:
    expected = set(SANDBOX_PREFIXES) | _hook_conn_vars()
    for name in ALL_AIRFLOW:
        env = _env(services[name])
        for var in sorted(expected):
            assert var in env, f"{name} does not pass {var}"
            match = _whole_interpolation(env[var])
            assert match and match["name"] == var and _expand(env[var]) == "", (
                f"{name}: {var} must be the pass-through ${{{var}:-}}, got {env[var]!r}"
            )
    assert "env_file" in services["airflow-worker"], "other settings from .env must reach the containers"


def _points_at(conn: dict) -> str:
    """The URL a connection sends requests to: ``host``, or a Slack connection's ``base_url`` extra."""
    return conn.get("host") or conn.get("extra", {}).get("base_url", "")


def test_sandbox_service(services: dict) -> None:
    sandbox = services["sandbox"]
    command = sandbox["command"]
    command = command if isinstance(command, str) else " ".join(command)
    assert "-m include.sandbox" in command
    env = _env(sandbox)
    assert env["SANDBOX_PORT"] == "8765"
    assert env["SANDBOX_HOST"] == "0.0.0.0", "reachable from the other containers"
    assert not any(key.startswith("AIRFLOW_CONN_") for key in env), "the sandbox gets no credentials"
    mounts = [_expand(volume) for volume in sandbox["volumes"]]
    assert f"./include:{CONTAINER_ROOT}/include" in mounts
    assert sandbox["healthcheck"]["test"]


def test_sandbox_listens_where_compose_says(services: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a container the sandbox must listen on the compose network, not on its own loopback."""
    from include.sandbox import server as sandbox_server

    monkeypatch.setenv("SANDBOX_HOST", _env(services["sandbox"])["SANDBOX_HOST"])
    monkeypatch.setenv("SANDBOX_PORT", "0")  # any free port
    server = sandbox_server.make_server()
    try:
        assert server.server_address[0] == "0.0.0.0", (
            "include/sandbox/server.py make_server() must default its host to $SANDBOX_HOST"
        )
    finally:
        server.sandbox.stop()
        server.server_close()


def test_sandbox_overlay_points_everything_at_the_sandbox(services: dict, overlay: dict) -> None:
    overlay_services = overlay["services"]
    assert set(overlay_services) <= set(services), "the overlay only adjusts existing services"
    assert set(CORE_AIRFLOW) | {"airflow-cli"} <= set(overlay_services)
    from include.sandbox.connections import sandbox_connections

    demo_connections = {var: json.loads(value) for var, value in sandbox_connections(SANDBOX_URL).items()}
    api_md = SANDBOX_API.read_text()
    expected = set(SANDBOX_PREFIXES) | _hook_conn_vars()
    assert expected <= set(demo_connections)
    for name, service in overlay_services.items():
        env = _env(service)
        assert expected <= set(env), f"{name}: the overlay leaves {expected - set(env)} on real systems"
        for var in expected:
            conn = json.loads(env[var])
            # The same connections `make demo` uses, only with the sandbox's compose host name.
            assert conn == demo_connections[var], f"{name}: {var} differs from include/sandbox/connections.py"
            prefix = SANDBOX_PREFIXES[var]
            assert _points_at(conn).startswith(f"{SANDBOX_URL}{prefix}"), (var, conn)
            assert f"(prefix `{prefix}`)" in api_md, f"{prefix} is not a sandbox prefix in API.md"
        assert env["ROLLOUT_PLAN"] == f"{CONTAINER_ROOT}/include/plans/sandbox.json"
    for name in ("airflow-worker", "airflow-triggerer"):
        depends = overlay_services[name]["depends_on"]
        assert depends["sandbox"]["condition"] == "service_healthy"


def test_rollout_plans_exist(services: dict, overlay: dict) -> None:
    worker = services["airflow-worker"]
    prod_plan = _expand(_env(worker)["ROLLOUT_PLAN"])
    sandbox_plan = _env(overlay["services"]["airflow-worker"])["ROLLOUT_PLAN"]
    assert prod_plan == f"{CONTAINER_ROOT}/include/plans/default.json"
    if not list((ROOT / "include" / "plans").glob("*.json")):
        pytest.skip("no rollout plan files yet")
    for plan in (prod_plan, sandbox_plan):
        assert _host_path(plan, worker).is_file(), f"{plan} does not exist in the repo"


def test_no_secret_in_the_files(compose: dict, overlay: dict) -> None:
    for path in (COMPOSE_FILE, SANDBOX_OVERLAY, DOCKERFILE):
        text = path.read_text()
        assert not _TOKEN_SHAPES.search(text), f"{path.name} contains a token"
        for run in _LONG_RUN.findall(text):
            looks_random = re.search(r"\d", run) and re.search(r"[a-z]", run) and re.search(r"[A-Z]", run)
            assert not looks_random, f"{path.name}: {run!r} looks like a secret"

    for document, is_overlay in ((compose, False), (overlay, True)):
        for name, service in document["services"].items():
            for key, raw in _env(service).items():
                value = _expand(raw)
                if _SECRET_KEY.search(key):
                    assert value in ALLOWED_LITERAL_PASSWORDS, f"{name}: {key} has a literal secret"
                if key.startswith("AIRFLOW_CONN_"):
                    if not is_overlay:
                        assert value == "", f"{name}: {key} must come from the environment"
                        continue
                    conn = json.loads(value)
                    assert conn["password"].startswith(SANDBOX_FAKE_TOKEN), (
                        f"{name}: {key} has a real-looking token"
                    )
                    assert _points_at(conn).startswith(SANDBOX_URL), f"{name}: {key} leaves the sandbox"
        for scalar in _string_scalars(document):
            for _user, password in re.findall(
                r"[a-z0-9+.-]+://([^:@/\s'\"]*):([^@/\s'\"]*)@", _expand(scalar)
            ):
                assert password in ALLOWED_LITERAL_PASSWORDS, f"credentials in {scalar!r}"


def test_healthchecks_and_start_order(services: dict) -> None:
    for name in ("postgres", "redis", *CORE_AIRFLOW, "flower", "sandbox"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in (*CORE_AIRFLOW, "flower"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
    init_depends = services["airflow-init"]["depends_on"]
    assert {key: value["condition"] for key, value in init_depends.items()} == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
    }
    for name in ("airflow-worker", "airflow-triggerer"):
        assert services[name]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy", name


def test_init_migrates_and_creates_the_pools(services: dict) -> None:
    init = services["airflow-init"]
    assert _env(init)["_AIRFLOW_DB_MIGRATE"] == "true"
    script = init["command"] if isinstance(init["command"], str) else "\n".join(init["command"])
    created = dict(re.findall(r"airflow pools set (\S+) (\d+) \"[^\"]+\"", script))
    assert created.get(FLAG_POOL) == "1", "one writer of the worker-image flag at a time"
    missing = _referenced_pools() - set(created)
    assert not missing, f"pools used by the DAGs but not created by airflow-init: {missing}"


def test_dags_folder_holds_the_dags(services: dict) -> None:
    dags = _host_path(f"{CONTAINER_ROOT}/dags", services["airflow-dag-processor"])
    assert dags.is_dir()
    if not list(dags.glob("*.py")):
        pytest.skip("no DAG files yet")
    assert dags.resolve() == (ROOT / "dags").resolve()


def test_deploy_doc_covers_the_settings(compose: dict) -> None:
    doc = DEPLOY_DOC.read_text()
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE_FILE.read_text()))
    for name in sorted(
        required | set(SANDBOX_PREFIXES) | {"ROLLOUT_PLAN", "POSTGRES_PASSWORD", "AIRFLOW_UID"}
    ):
        assert name in doc, f"docs/deploy.md does not mention {name}"
    for phrase in (
        "docker compose up airflow-init",
        "docker compose up -d",
        "--profile sandbox",
        "docker-compose.sandbox.yaml",
        "--scale airflow-worker=",
        "--scale airflow-triggerer=",
        "AIRFLOW__SECRETS__BACKEND",
    ):
        assert phrase in doc, f"docs/deploy.md does not show {phrase!r}"


def test_env_file_is_not_tracked() -> None:
    if not shutil.which("git") or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "--", ".env"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert not tracked.strip(), ".env holds the secrets: it must never be committed"


def _compose_cli() -> list[str] | None:
    for candidate in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(candidate[0]):
            continue
        probe = subprocess.run([*candidate, "version", "--short"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip().lstrip("v").startswith("2"):
            return candidate
    return None


def test_compose_cli_accepts_the_files(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose v2 CLI on this machine")
    env = {
        **os.environ,
        "AIRFLOW_FERNET_KEY": "test",
        "AIRFLOW_JWT_SECRET": "test",
        "AIRFLOW_API_SECRET_KEY": "test",
        "COMPOSE_PROJECT_NAME": "compose-test",
    }
    env.pop("COMPOSE_FILE", None)
    env.pop("COMPOSE_PROFILES", None)
    empty_env_file = tmp_path / "empty.env"  # a developer's .env (COMPOSE_PROFILES, ...) stays out
    empty_env_file.write_text("")
    base = [
        *cli,
        "--project-directory",
        str(ROOT),
        "--env-file",
        str(empty_env_file),
        "-f",
        str(COMPOSE_FILE),
    ]
    with_overlay = [*base, "-f", str(SANDBOX_OVERLAY)]

    def config(*args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*args, "config", "--quiet"], env={**env, **(extra_env or {})}, capture_output=True, text=True
        )

    for args in (base, [*base, "--profile", "sandbox"], [*with_overlay, "--profile", "sandbox"]):
        result = config(*args)
        assert result.returncode == 0, result.stderr
    without_profile = config(*with_overlay)
    assert without_profile.returncode != 0 and "sandbox" in without_profile.stderr
    no_secret = config(*base, extra_env={"AIRFLOW_JWT_SECRET": ""})
    assert no_secret.returncode != 0 and "AIRFLOW_JWT_SECRET" in no_secret.stderr
