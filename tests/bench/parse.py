"""``dag_parse_seconds`` / ``dag_parse_ratio``: DagBag parse of ``dags/`` against its same-shape baseline.

Like the dag-processor, every parse happens in a freshly forked process: the parent has
imported Airflow (the DagBag machinery) and nothing of the project, so each parse pays for
importing the project's modules and loading the plan, as a real parse does. The real
``dags/`` and the generated EmptyOperator baseline (``shape.py``, one file with the
baseline of every DAG in ``dags/``) are parsed alternately; the figures are medians.

Each real parse also counts socket connects, SQL statements and Variable lookups made while
parsing: the issue requires none at parse time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tests.bench.common import BUILD, ROOT, emit, median

HOME = BUILD / "airflow-parse"
SHAPE_DIR = BUILD / "shape-dags"


def _setup_env() -> None:
    from tests.harness.env import airflow_env

    HOME.mkdir(parents=True, exist_ok=True)
    # Production plan (what the dag-processor parses); a dead sandbox URL: nothing may be called.
    os.environ.update(airflow_env(HOME, "http://127.0.0.1:9", plan="default"))
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "ERROR"


def _in_child(fn) -> dict:
    """Run ``fn()`` in a forked child and return its JSON result."""
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


def _guarded_parse(folder: Path) -> dict:
    """Parse ``folder`` with a DagBag, counting network, DB and Variable access."""
    import socket

    import sqlalchemy
    from airflow.dag_processing.dagbag import DagBag

    touched = {"socket_connects": 0, "sql_statements": 0, "variable_gets": 0}
    real_connect = socket.socket.connect

    def connect(sock, address):
        touched["socket_connects"] += 1
        return real_connect(sock, address)

    socket.socket.connect = connect  # type: ignore[method-assign]

    def on_sql(*_args, **_kwargs):
        touched["sql_statements"] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", on_sql)
    import airflow.sdk

    real_get = airflow.sdk.Variable.get

    def var_get(*args, **kwargs):
        touched["variable_gets"] += 1
        return real_get(*args, **kwargs)

    airflow.sdk.Variable.get = var_get  # type: ignore[method-assign]
    started = time.perf_counter()
    bag = DagBag(dag_folder=str(folder), safe_mode=False)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "dags": sorted(bag.dags), "tasks": sum(len(d.tasks) for d in bag.dags.values()),
            "import_errors": {str(k): v[-300:] for k, v in bag.import_errors.items()}, **touched}


def _write_shape() -> dict:
    """In a child (so the parent stays clean of project modules): parse dags/, write the baseline."""
    from airflow.dag_processing.dagbag import DagBag

    from tests.bench.shape import SHAPE_SUFFIX, describe, shape_module_source

    bag = DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False)
    if bag.import_errors:
        return {"error": f"dags/ does not parse: {bag.import_errors}"}
    SHAPE_DIR.mkdir(parents=True, exist_ok=True)
    target = SHAPE_DIR / "dags_shape.py"
    target.write_text(shape_module_source(list(bag.dags.values())))
    shape_bag = DagBag(dag_folder=str(SHAPE_DIR), safe_mode=False)
    same = all(describe(d) == describe(shape_bag.dags[i + SHAPE_SUFFIX]) for i, d in bag.dags.items())
    return {"file": str(target), "same_shape": same, "shape_import_errors": list(shape_bag.import_errors)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    _setup_env()
    import airflow.dag_processing.dagbag  # noqa: F401  the dag-processor has this before it forks
    import airflow.sdk  # noqa: F401
    import sqlalchemy  # noqa: F401

    assert not any(m.startswith("image_rollout") for m in sys.modules), "parent must not import the project"
    shape = _in_child(_write_shape)
    if "error" in shape or not shape.get("same_shape"):
        emit({"error": f"could not build the baseline: {shape}"})
        return 1
    real, base, touched = [], [], {"socket_connects": 0, "sql_statements": 0, "variable_gets": 0}
    info = {}
    for i in range(args.rounds):
        order = [("real", ROOT / "dags"), ("shape", SHAPE_DIR)]
        if i % 2:
            order.reverse()
        for kind, folder in order:
            r = _in_child(lambda folder=folder: _guarded_parse(folder))
            if "error" in r or r.get("import_errors"):
                emit({"error": f"{kind} parse failed: {r}"})
                return 1
            (real if kind == "real" else base).append(r["seconds"])
            if kind == "real":
                for key in touched:
                    touched[key] += r[key]
                info["real"] = {"dags": r["dags"], "tasks": r["tasks"]}
            else:
                info["shape"] = {"dags": r["dags"], "tasks": r["tasks"]}
    result = {
        "dag_parse_seconds": round(median(real), 4),
        "dag_parse_shape_seconds": round(median(base), 4),
        "dag_parse_ratio": round(median(real) / median(base), 3),
        "dag_parse_rounds": args.rounds,
        "dag_parse_samples": {"real": [round(x, 4) for x in real], "shape": [round(x, 4) for x in base]},
        "dag_parse_access": touched,
        "dag_parse_dags": info,
        "shape_file": shape["file"],
    }
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
