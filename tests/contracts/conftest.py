"""Contract tests: the sandbox's answers, held to what each real system's publisher ships.

Descriptions are read from ``$ROLLOUT_SPECS_DIR``, else ``<repo>/../shared/specs`` (CI lays shared/
beside the clone), else ``/work/shared/specs``; GitHub's GHES description comes from the npm package
``@octokit/openapi`` that ``make test`` installs into ``build/octokit`` (``$ROLLOUT_OCTOKIT_DIR``
overrides). Nothing here reaches the network except the in-process sandbox.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from pathlib import Path

import pytest
import requests
from openapi_schema_validator import OAS30Validator

from include.sandbox import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
OCTOKIT_PACKAGE = "@octokit/openapi"
#: The quick timing the contract checks use (no background reports or autorecovery).
FAST = {"reload_seconds": 0.1, "autorecovery_interval_seconds": 0, "approval_delay_seconds": 0.2,
        "report_interval_seconds": 0, "rebuild_seconds": 0.1, "queue_seconds": 0.2}


def specs_dir() -> Path | None:
    candidates = [os.environ.get("ROLLOUT_SPECS_DIR"), ROOT.parent / "shared" / "specs", "/work/shared/specs"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "launchdarkly-rest-api.openapi.yaml").is_file():
            return Path(candidate)
    return None


def ghes_description() -> Path | None:
    folder = Path(os.environ.get("ROLLOUT_OCTOKIT_DIR") or ROOT / "build" / "octokit")
    generated = folder / "node_modules" / OCTOKIT_PACKAGE / "generated"
    found = sorted(generated.glob("ghes-3.*.json"), key=lambda p: [int(n) for n in re.findall(r"\d+", p.name)])
    found = [p for p in found if ".deref." not in p.name]
    return found[-1] if found else None


def missing(why: str) -> None:
    """A publisher's description is not here: skip, or fail under ``make test`` (ROLLOUT_REQUIRE_CONTRACTS=1),
    where a contract test that skipped would prove nothing."""
    if os.environ.get("ROLLOUT_REQUIRE_CONTRACTS") == "1":
        pytest.fail(why)
    pytest.skip(why)


@functools.cache
def load_spec(name: str) -> dict:
    folder = specs_dir()
    if folder is None:
        missing("the publishers' API descriptions (shared/specs) are not beside the repository; "
                "set ROLLOUT_SPECS_DIR")
    path = folder / name
    if path.suffix == ".yaml":
        import yaml

        with path.open() as fh:
            return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return json.loads(path.read_text())


@functools.cache
def load_ghes() -> dict:
    path = ghes_description()
    if path is None:
        missing(f"{OCTOKIT_PACKAGE} is not installed in build/octokit: run `make test-deps` (make test does)")
    return json.loads(path.read_text())


def response_schema(spec: dict, path: str, method: str, status: str = "200") -> dict:
    """The JSON schema a description gives for one operation's answer, resolvable on its own."""
    response = spec["paths"][path][method]["responses"][status]
    if "$ref" in response:
        response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[-1]]
    schema = response["content"]["application/json"]["schema"]
    return {**copy.deepcopy(schema), "components": spec["components"]}


def validate(spec: dict, path: str, method: str, body: object, status: str = "200") -> None:
    """Raise jsonschema's ValidationError when `body` is not what the description promises."""
    schema = response_schema(spec, path, method, status)
    # The schema's own `$ref`s point into "#/components/...": the wrapper above carries them.
    OAS30Validator(schema).validate(body)


@pytest.fixture(scope="session")
def sandbox_url():
    server, base = serve_in_thread(0, timing=FAST)
    yield base
    server.stop()


@pytest.fixture
def sandbox(sandbox_url):
    """A freshly reset sandbox: returns a requests.Session whose `.base` is the sandbox URL."""
    http = requests.Session()
    http.base = sandbox_url
    r = http.post(sandbox_url + "/_sandbox/reset", json={"timing": FAST}, timeout=5)
    assert r.status_code == 200, r.text
    yield http
    http.close()


def validate_component(spec: dict, name: str, body: object) -> None:
    """Validate against one named schema of the description (where an operation's `oneOf` is ambiguous)."""
    OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]}).validate(body)
