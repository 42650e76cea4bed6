"""What a DAG file's parse imports: only what building the DAG needs (issue 13 item 1).

The dag-processor parses every DAG file in a fresh process, so whatever our modules import at their
top is paid on every parse. Hooks (requests, aiohttp, the http provider, the Slack SDK) and the
run-time rules (preconditions, gates, the evidence format, the backout plan, reports) are imported
when a task runs. One such import at the top of an operator module once made every parse of the
rollout and backout files 130 ms slower without any test noticing; this one would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"

#: Imported only when a task (or trigger) runs, never to parse a DAG file.
RUN_TIME_ONLY = (
    "requests", "aiohttp", "tenacity", "slack_sdk", "airflow.providers.http", "airflow.providers.slack",
    "image_rollout.hooks", "image_rollout.preconditions", "image_rollout.verdicts", "image_rollout.evidence_file",
    "image_rollout.backout", "image_rollout.reports", "image_rollout.watcher", "image_rollout.triggers",
    "image_rollout.inputs", "image_rollout.operators.claim", "image_rollout.payloads",
)

# Parses each file in the order given, in one fresh interpreter, and prints the modules each parse added.
_PARSE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
added = {}
for path in sys.argv[1:]:
    before = set(sys.modules)
    bag = DagBag(dag_folder=path)
    assert not bag.import_errors, bag.import_errors
    added[path] = sorted(set(sys.modules) - before)
print(json.dumps(added))
"""


def _modules_added_by_parsing(*paths: Path) -> dict[str, list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", _PARSE, *map(str, paths)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_time_only(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == r or m.startswith(r + ".") for r in RUN_TIME_ONLY)]


def test_parsing_imports_no_hook_and_no_run_time_rules():
    # The watcher first: its file must not pull in the rollout's modules or the plan either.
    watcher = DAGS / "immutable_image_watcher.py"
    others = sorted(p for p in DAGS.glob("*.py") if p != watcher)
    added = _modules_added_by_parsing(watcher, *others)
    assert {Path(p).name for p in added} == {p.name for p in DAGS.glob("*.py")}
    for path, modules in added.items():
        bad = _run_time_only(modules)
        assert bad == [], f"parsing {Path(path).name} imported {len(bad)} run-time modules, e.g. {bad[:8]}"
    watcher_ours = [m for m in added[str(watcher)] if m.startswith("image_rollout")]
    assert watcher_ours == ["image_rollout", "image_rollout.contracts"]


def test_the_backout_parse_imports_none_of_the_rollout_s_own_operators():
    # The backout DAG shares only the task defaults with the rollout (image_rollout.dag_defaults); it
    # once imported them from rollout_dag.py, and with it every rollout operator (about 1.3 ms a parse).
    backout = DAGS / "immutable_image_backout.py"
    ours = [m for m in _modules_added_by_parsing(backout)[str(backout)] if m.startswith("image_rollout")]
    rollout_only = ("image_rollout.rollout_dag", "image_rollout.operators.build", "image_rollout.operators.rollback")
    assert [m for m in ours if m in rollout_only] == []
