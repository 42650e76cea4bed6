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
#: ``--what-if-operator-shells``: the project with its operator classes reduced to their declarations.
SHELLS_DIR = BUILD / "operator-shells"


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
    started, cpu_started = time.perf_counter(), time.process_time()
    bag = DagBag(dag_folder=str(path), safe_mode=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"seconds": seconds, "cpu_seconds": cpu, "dags": sorted(bag.dags), "tasks": sum(len(d.tasks) for d in bag.dags.values()),
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


def _prepare_parent() -> None:
    """What the dag-processor's manager holds, and how, before it forks a parser for a file.

    Its DagBag machinery, imported at start; then ``gc.freeze()`` (``DagFileProcessorManager.before_run``,
    so that a parser's collections do not walk the manager's heap); then, file by file, every
    ``airflow.*`` module a DAG file names (``parsing_pre_import_modules``), long since aged into the
    oldest generation in a manager that has been running (``gc.collect()`` here).
    """
    import gc

    sys.dont_write_bytecode = False  # a deployment caches bytecode; PYTHONDONTWRITEBYTECODE would not
    import airflow.dag_processing.dagbag  # noqa: F401  the dag-processor has this before it forks
    import airflow.sdk  # noqa: F401
    import sqlalchemy  # noqa: F401
    import structlog
    from airflow.dag_processing.processor import _pre_import_airflow_modules

    gc.freeze()
    for folder in (ROOT / "dags", SHAPE_DIR, PARAMS_DIR):
        for path in sorted(folder.glob("*.py")):
            _pre_import_airflow_modules(str(path), structlog.get_logger())
    gc.collect()


def _parse_round(kind: str, paths: list[Path], samples: dict, per_file: dict, touched: dict, info: dict) -> str | None:
    """One parse of every file of one side, each in a process of its own; an error, or None."""
    seconds, cpu, dags, tasks = 0.0, 0.0, [], 0
    for path in paths:
        r = in_child(lambda path=path: _guarded_parse(path))
        if "error" in r or r.get("import_errors"):
            return f"{kind} parse of {path.name} failed: {r}"
        seconds += r["seconds"]
        cpu += r["cpu_seconds"]
        dags += r["dags"]
        tasks += r["tasks"]
        per_file.setdefault(path.name, []).append(r["seconds"])
        per_file.setdefault(f"{path.name} cpu", []).append(r["cpu_seconds"])
        if kind == "real":
            for key in touched:
                touched[key] += r[key]
    samples[kind].append(seconds)
    samples[f"{kind}_cpu"].append(cpu)
    info[kind] = {"dags": sorted(dags), "tasks": tasks}
    return None


def _per_file_ratios(real: list[Path], per_file: dict[str, list[float]], suffix: str = "") -> dict[str, float]:
    """Each DAG file against its own same-Params baseline (``<dag_id>_shape_params.py``; here dag id = file stem)."""
    ratios = {}
    for path in real:
        base = per_file.get(f"{path.stem}_shape_params.py{suffix}")
        if base:
            ratios[f"dags/{path.name}"] = round(median(per_file[path.name + suffix]) / median(base), 3)
    return ratios


def _write_operator_shells() -> Path:
    """A copy of ``plugins/`` whose operator classes keep their ``__init__`` and class attributes and lose
    every other method: what a parse would import if the operators' code were imported only when a task
    runs (a what-if for a redesign, not a figure; the copy is never run)."""
    import ast
    import shutil

    shutil.rmtree(SHELLS_DIR, ignore_errors=True)
    shutil.copytree(ROOT / "plugins" / "image_rollout", SHELLS_DIR / "plugins" / "image_rollout",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (SHELLS_DIR / "include").symlink_to(ROOT / "include")  # plan.py finds include/plans/ beside plugins/
    for path in (SHELLS_DIR / "plugins" / "image_rollout" / "operators").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                node.body = [n for n in node.body if not isinstance(n, ast.FunctionDef) or n.name == "__init__"]
                node.body = node.body or [ast.Pass()]
        path.write_text(ast.unparse(tree))
    return SHELLS_DIR / "plugins"


def _where_image_rollout_is() -> dict:
    """The file a parse would import ``image_rollout`` from (found, not imported)."""
    import importlib.util

    return {"origin": importlib.util.find_spec("image_rollout").origin}


def _what_if_preimport(modules: list[str]) -> None:
    """Import ``modules`` in the parent (after the heap is frozen, so only their own cost is taken away)."""
    import gc
    import importlib

    for name in modules:
        importlib.import_module(name)
    if modules:
        gc.collect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--what-if-preimported", nargs="*", default=[], metavar="MODULE",
                        help="a what-if, not the figure: import these project modules in the parent, so the "
                             "parses do not pay for them (e.g. image_rollout.plan)")
    parser.add_argument("--what-if-operator-shells", action="store_true",
                        help="a what-if, not the figure: parse with operator classes that keep only their "
                             "__init__ and class attributes (a copy under build/bench/operator-shells)")
    args = parser.parse_args(argv)
    _setup_env()
    shape = in_child(_write_shape)  # before the parent imports anything: the child starts clean
    if "error" in shape or not shape.get("same_shape"):
        emit({"error": f"could not build the baseline: {shape}"})
        return 1
    _prepare_parent()
    assert not any(m.startswith("image_rollout") for m in sys.modules), "parent must not import the project"
    if args.what_if_operator_shells:
        sys.path.insert(0, str(_write_operator_shells()))
        found = in_child(_where_image_rollout_is)
        assert found.get("origin", "").startswith(str(SHELLS_DIR)), f"the shells are not what a parse imports: {found}"
    _what_if_preimport(args.what_if_preimported)
    folders = {"real": ROOT / "dags", "shape": SHAPE_DIR, "shape_params": PARAMS_DIR}
    files = {kind: sorted(folder.glob("*.py")) for kind, folder in folders.items()}
    samples: dict[str, list[float]] = {k: [] for kind in folders for k in (kind, f"{kind}_cpu")}
    touched = {"socket_connects": 0, "sql_statements": 0, "variable_gets": 0}
    info: dict = {}
    per_file: dict[str, list[float]] = {}
    for paths in files.values():  # warm-up: bytecode (and the plan cache) written, page cache warm
        for path in paths:
            in_child(lambda path=path: _guarded_parse(path))
    for i in range(args.rounds):
        order = list(files.items())
        if i % 2:  # alternate the order, so neither side always parses on a warmer machine
            order.reverse()
        for kind, paths in order:
            error = _parse_round(kind, paths, samples, per_file, touched, info)
            if error:
                emit({"error": error})
                return 1
    real, base, same_params = samples["real"], samples["shape"], samples["shape_params"]
    real_cpu, same_params_cpu = samples["real_cpu"], samples["shape_params_cpu"]
    emit({
        "dag_parse_seconds": round(median(real), 4),
        "dag_parse_shape_seconds": round(median(base), 4),
        "dag_parse_shape_params_seconds": round(median(same_params), 4),
        "dag_parse_ratio": round(median(real) / median(base), 3),
        "dag_parse_ratio_same_params": round(median(real) / median(same_params), 3),
        # CPU time of the parsing process: what a parse costs, without the waits for a CPU that a busy
        # machine adds to the wall-clock figures above.
        "dag_parse_cpu_seconds": round(median(real_cpu), 4),
        "dag_parse_cpu_ratio": round(median(real_cpu) / median(samples["shape_cpu"]), 3),
        "dag_parse_cpu_ratio_same_params": round(median(real_cpu) / median(same_params_cpu), 3),
        "dag_parse_rounds": args.rounds,
        "dag_parse_what_if_preimported": args.what_if_preimported,
        "dag_parse_what_if_operator_shells": args.what_if_operator_shells,
        "dag_parse_samples": {kind: [round(x, 4) for x in xs] for kind, xs in samples.items()},
        "dag_parse_access": touched,
        "dag_parse_dags": info,
        "dag_parse_seconds_per_file": {f"dags/{p.name}": round(median(per_file[p.name]), 4) for p in files["real"]},
        "dag_parse_ratio_same_params_per_file": _per_file_ratios(files["real"], per_file),
        "dag_parse_cpu_ratio_same_params_per_file": _per_file_ratios(files["real"], per_file, " cpu"),
        "shape_file": shape["file"],
        "dag_parse_import_costs_ms": _import_costs(ROOT / "dags"),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
