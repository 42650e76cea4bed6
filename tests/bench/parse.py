"""``dag_parse_seconds`` / ``dag_parse_ratio``: DagBag parse of ``dags/`` against its same-shape baseline.

As in the dag-processor, every DAG file is parsed in a freshly forked process of its own (the
dag-processor starts one parser process per file), and the parent has imported what the
dag-processor's manager has before it forks a parser: Airflow's DagBag machinery and, with
``[dag_processor] parsing_pre_import_modules`` (default on), every ``airflow.*`` module a DAG
file imports by name. Nothing of the project is imported in the parent, so each parse pays for
importing the project's modules (and what they import) and for loading the plan, as a real parse
does. A figure is the sum over the folder's files of one parse each. Bytecode is cached (as in
any deployment that can write ``__pycache__``), and one untimed round warms it. The real
``dags/`` and the generated EmptyOperator baselines (``shape.py``: one file per DAG in
``dags/``, with and without the DAG's Params form) are parsed alternately; the figures are
medians.

Each real parse also counts socket connects, SQL statements and Variable lookups made while
parsing: the issue requires none at parse time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tests.bench.common import BUILD, ROOT, emit, in_child, median

HOME = BUILD / "airflow-parse"
SHAPE_DIR = BUILD / "shape-dags"
#: The second baseline: the same shape with the same Params form (Airflow copies it into every task).
PARAMS_DIR = BUILD / "shape-dags-params"


def _setup_env() -> None:
    from tests.harness.env import airflow_env

    HOME.mkdir(parents=True, exist_ok=True)
    # Production plan (what the dag-processor parses); a dead sandbox URL: nothing may be called.
    os.environ.update(airflow_env(HOME, "http://127.0.0.1:9", plan="default"))
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "ERROR"


def _guarded_parse(path: Path) -> dict:
    """Parse ``path`` (a DAG file or folder) with a DagBag, counting network, DB and Variable access."""
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
    bag = DagBag(dag_folder=str(path), safe_mode=False)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "dags": sorted(bag.dags), "tasks": sum(len(d.tasks) for d in bag.dags.values()),
            "import_errors": {str(k): v[-300:] for k, v in bag.import_errors.items()}, **touched}


def _import_costs(folder: Path, top: int = 6) -> dict[str, float]:
    """The costliest third-party packages a parse of ``folder`` imports, each timed alone (ms)."""
    def new_modules() -> dict:
        from airflow.dag_processing.dagbag import DagBag

        before = set(sys.modules)
        DagBag(dag_folder=str(folder), safe_mode=False)
        names = set()
        for name in set(sys.modules) - before:
            parts = name.split(".")
            if parts[0] in ("image_rollout", "include", "tests") or name.startswith("unusual_prefix"):
                continue
            names.add(".".join(parts[:3]) if parts[:2] == ["airflow", "providers"] else parts[0])
        return {"modules": sorted(names)}

    def import_ms(name: str) -> dict:
        import importlib

        started = time.perf_counter()
        importlib.import_module(name)
        return {"ms": (time.perf_counter() - started) * 1000}

    costs = {}
    for name in in_child(new_modules).get("modules", []):
        r = in_child(lambda name=name: import_ms(name))
        if "ms" in r:
            costs[name] = round(r["ms"], 1)
    return dict(sorted(costs.items(), key=lambda kv: -kv[1])[:top])


def _write_shape() -> dict:
    """In a child (so the parent stays clean of project modules): parse dags/, write the baselines.

    One baseline file per DAG, as ``dags/`` has one file per DAG: each is parsed in a process of its own.
    """
    import shutil

    from airflow.dag_processing.dagbag import DagBag

    from tests.bench.shape import PARAMS_SUFFIX, SHAPE_SUFFIX, describe, shape_module_source

    bag = DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False)
    if bag.import_errors:
        return {"error": f"dags/ does not parse: {bag.import_errors}"}
    for folder in (SHAPE_DIR, PARAMS_DIR):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for dag_id, dag in bag.dags.items():
        (SHAPE_DIR / f"{dag_id}_shape.py").write_text(shape_module_source([dag]))
        (PARAMS_DIR / f"{dag_id}_shape_params.py").write_text(shape_module_source([dag], with_params=True))
    target = SHAPE_DIR
    shape_bag = DagBag(dag_folder=str(SHAPE_DIR), safe_mode=False)
    same = all(describe(d) == describe(shape_bag.dags[i + SHAPE_SUFFIX]) for i, d in bag.dags.items())
    params_bag = DagBag(dag_folder=str(PARAMS_DIR), safe_mode=False)
    same = same and all(
        describe(d) == describe(params_bag.dags[i + PARAMS_SUFFIX])
        and d.params.dump() == params_bag.dags[i + PARAMS_SUFFIX].params.dump()
        for i, d in bag.dags.items()
    )
    return {"file": str(target), "same_shape": same,
            "shape_import_errors": list(shape_bag.import_errors) + list(params_bag.import_errors)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    _setup_env()
    sys.dont_write_bytecode = False  # a deployment caches bytecode; PYTHONDONTWRITEBYTECODE would not
    import airflow.dag_processing.dagbag  # noqa: F401  the dag-processor has this before it forks
    import airflow.sdk  # noqa: F401
    import sqlalchemy  # noqa: F401
    import structlog
    from airflow.dag_processing.processor import _pre_import_airflow_modules

    assert not any(m.startswith("image_rollout") for m in sys.modules), "parent must not import the project"
    shape = in_child(_write_shape)
    if "error" in shape or not shape.get("same_shape"):
        emit({"error": f"could not build the baseline: {shape}"})
        return 1
    folders = {"real": ROOT / "dags", "shape": SHAPE_DIR, "shape_params": PARAMS_DIR}
    for folder in folders.values():  # what the dag-processor does before forking a parser
        for path in sorted(folder.glob("*.py")):
            _pre_import_airflow_modules(str(path), structlog.get_logger())
    samples: dict[str, list[float]] = {kind: [] for kind in folders}
    touched = {"socket_connects": 0, "sql_statements": 0, "variable_gets": 0}
    info = {}
    files = {kind: sorted(folder.glob("*.py")) for kind, folder in folders.items()}
    for paths in files.values():  # warm-up: bytecode (and the plan cache) written, page cache warm
        for path in paths:
            in_child(lambda path=path: _guarded_parse(path))
    per_file: dict[str, list[float]] = {str(path.relative_to(ROOT)): [] for path in files["real"]}
    for i in range(args.rounds):
        order = list(files.items())
        if i % 2:  # alternate the order, so neither side always parses on a warmer machine
            order.reverse()
        for kind, paths in order:
            seconds, dags, tasks = 0.0, [], 0
            for path in paths:  # one process per file, as the dag-processor parses
                r = in_child(lambda path=path: _guarded_parse(path))
                if "error" in r or r.get("import_errors"):
                    emit({"error": f"{kind} parse of {path.name} failed: {r}"})
                    return 1
                seconds += r["seconds"]
                dags += r["dags"]
                tasks += r["tasks"]
                if kind == "real":
                    per_file[str(path.relative_to(ROOT))].append(r["seconds"])
                    for key in touched:
                        touched[key] += r[key]
            samples[kind].append(seconds)
            info[kind] = {"dags": sorted(dags), "tasks": tasks}
    real, base, same_params = samples["real"], samples["shape"], samples["shape_params"]
    result = {
        "dag_parse_seconds": round(median(real), 4),
        "dag_parse_shape_seconds": round(median(base), 4),
        "dag_parse_shape_params_seconds": round(median(same_params), 4),
        "dag_parse_ratio": round(median(real) / median(base), 3),
        "dag_parse_ratio_same_params": round(median(real) / median(same_params), 3),
        "dag_parse_rounds": args.rounds,
        "dag_parse_samples": {kind: [round(x, 4) for x in xs] for kind, xs in samples.items()},
        "dag_parse_access": touched,
        "dag_parse_dags": info,
        "dag_parse_seconds_per_file": {name: round(median(xs), 4) for name, xs in per_file.items()},
        "shape_file": shape["file"],
        "dag_parse_import_costs_ms": _import_costs(ROOT / "dags"),
    }
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
