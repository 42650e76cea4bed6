"""``make demo``: one whole rollout against the sandbox on an embedded Airflow, the way production runs it.

Why not ``dag.test()``: the demo shows the real thing: scheduler, dag-processor, triggerer and
api-server (SQLite and LocalExecutor, as ``airflow standalone`` runs them), a trigger over the
REST API as the Jenkins job sends it, the prod change approved by a person through the HITL API,
then the flag state, the evidence file and the UI with the finished run. Ctrl-C stops it all;
``--exit`` (or DEMO_EXIT=1) returns after the run, for CI smoke tests.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from airflow_client.client.exceptions import ApiException

from tests.harness.env import BUILD, ROOT, ensure_sandbox, sandbox_call
from tests.harness.progress import Progress, fmt_seconds
from tests.harness.stack import DAG_ID, WATCHER_DAG_ID, AirflowStack, port_is_free, run_id_for, state_str

DEMO_PASSWORDS = {"admin": "admin"}  # the UI login printed at the end; the other users get random ones


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def build_of(image_map: dict, state: dict) -> str:
    """Which build an image map belongs to (the sandbox knows the previous and the new one)."""
    for which in ("new", "previous"):
        if image_map == state["images"][which]:
            return f"{state['builds'][which]} ({which})"
    return f"unknown map {image_map}"


def print_outcome(state: dict, run_id: str, base_url: str, out=print) -> None:
    """Flag state per target, the evidence file and its commits."""
    order = [t["target"] if isinstance(t, dict) else t for t in state.get("targets") or []] or list(state["flag"]["rules"])
    out("\nworker-image flag, per target -> build:")
    for target in order:
        if target in state["flag"]["rules"]:
            out(f"  {target:<26} {build_of(state['flag']['rules'][target], state)}")
    evidence = state["evidence"]
    out(f"\nevidence file: {evidence.get('path')}  (alchemy-conductors/team, master)")
    for commit in evidence.get("commits") or []:
        out(f"  commit {commit['sha'][:12]}  {commit.get('message', '').splitlines()[0] if commit.get('message') else ''}")
    if evidence.get("commits"):
        out("\n----- evidence file, final text -----")
        out(evidence["commits"][-1]["content"].rstrip())
        out("----- end of evidence file -----")
    promotions = state.get("promotions") or []
    out(f"\npromotions: {len(promotions)}, reloads: {len(state.get('reloads') or [])}, "
        f"slack messages: {len(state.get('slack') or [])}")
    out(f"\nUI: {base_url}/dags/{DAG_ID}/runs/{run_id}   (login: admin / {DEMO_PASSWORDS['admin']})")


def run_demo(args) -> int:
    started = time.monotonic()
    home = Path(args.home).resolve()
    os.environ.setdefault("AIRFLOW_HOME", str(home))  # this process imports the DAG code's helpers
    if not port_is_free(args.api_port):
        print(f"port {args.api_port} is taken (another Airflow?); use --api-port", file=sys.stderr)
        return 2
    logging.getLogger("sandbox").setLevel(logging.WARNING)  # its request log would drown the progress lines
    server, sandbox_url = ensure_sandbox(args.port)
    print(f"sandbox: {sandbox_url} ({'started here' if server else 'reused'}); resetting it")
    sandbox_call(sandbox_url, "/_sandbox/reset", {})
    build = sandbox_call(sandbox_url, "/_sandbox/state")["builds"]["new"]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # also when started with SIGINT ignored (CI, nohup)
        signal.signal(sig, _raise_interrupt)
    if home.exists():
        shutil.rmtree(home)  # one run per build id: a fresh metadata DB each demo
    stack = AirflowStack(home, sandbox_url, api_port=args.api_port, api_host=args.api_host, plan=args.plan,
                         passwords={**DEMO_PASSWORDS, "jenkins": os.urandom(9).hex(),
                                    "sre-approver": os.urandom(9).hex()})
    try:
        print(f"Airflow home {home} (SQLite, LocalExecutor as `airflow standalone` runs it); "
              f"component logs in {stack.logs}")
        print("starting: airflow db migrate, pools set worker_image_flag 1, scheduler, dag-processor, triggerer, "
              f"api-server on :{args.api_port} ...")
        stack.start()
        print(f"  components up after {fmt_seconds(time.monotonic() - started)}: "
              + ", ".join(f"{n} pid {p.pid}" for n, p in stack.procs.items()))
        stack.wait_dag(DAG_ID)
        stack.unpause(DAG_ID)
        print(f"  {DAG_ID} parsed and unpaused ({WATCHER_DAG_ID} stays paused: this demo is the webhook path)")
        run_id = run_id_for(build)
        print(f"\nThe Jenkins job triggers the rollout of build {build} (as user 'jenkins'):\n")
        print(stack.curl_trigger(build))
        print()
        triggered = time.monotonic()
        run = stack.trigger_rollout(build)
        print(f"  -> dag run {run.dag_run_id}, state {getattr(run.state, 'value', run.state)}")
        try:
            stack.trigger_rollout(build)
            print("  !! a second POST for the same build was accepted: the run id does not guard the build")
        except ApiException as exc:
            print(f"  -> the same POST again: HTTP {exc.status} (one rollout per build)\n")

        def detail(key: str, state: str) -> str:
            if key == "bake.wait_bake":
                try:
                    return f"until {stack.xcom(run_id, 'bake.bake_until')}"
                except Exception:
                    return ""
            return ""

        progress = Progress(args.plan, triggered, detail=detail)
        approvals: list[dict] = []

        def on_poll(tis: list) -> None:
            progress.update(tis)
            if any(state_str(ti.state) == "awaiting_input" for ti in tis):
                for pending in stack.pending_approvals(run_id):
                    print(f"  [{progress.elapsed():>6}]     ... approval requested: {pending.subject}")
                for answer in stack.approve_pending(run_id, option="Approve", user="sre-approver"):
                    approvals.append(answer)
                    who = answer["responded_by"]
                    print(f"  [{progress.elapsed():>6}]     ... {answer['task_id']}: {answer['chosen'][0]} by "
                          f"{who['name']} (id {who['id']}) through PATCH .../hitlDetails")

        final = stack.wait_run(run_id, timeout=args.timeout, on_poll=on_poll)
        progress.update(stack.task_instances(run_id))
        print(f"\nrun {run_id}: {final} after {fmt_seconds(time.monotonic() - triggered)} "
              f"(wall time since `make demo` started: {fmt_seconds(time.monotonic() - started)})")
        if final != "success":
            bad = {k: s for k, s in stack.task_states(run_id).items() if s in ("failed", "upstream_failed")}
            print(f"tasks not successful: {bad}; task logs under {home / 'logs'}")
        print_outcome(sandbox_call(sandbox_url, "/_sandbox/state"), run_id, stack.base_url)
        peak = stack.peak_rss
        print(f"\nwall time: {fmt_seconds(time.monotonic() - started)}; peak memory of the Airflow processes: "
              f"{peak.get('rss_mb')} MB RSS ({peak.get('pss_mb')} MB PSS) over {peak.get('processes')} processes")
        if args.exit:
            return 0 if final == "success" else 1
        print("\nThe UI stays up with the finished run; Ctrl-C stops Airflow and the sandbox.")
        while True:
            time.sleep(2)
            stack.check_alive()
    except KeyboardInterrupt:
        print("\nstopping ...")
        return 0
    finally:
        stack.stop()
        if server is not None:
            server.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("SANDBOX_PORT", 8765)), help="sandbox port")
    parser.add_argument("--api-port", type=int, default=int(os.environ.get("DEMO_API_PORT", 8080)))
    parser.add_argument("--api-host", default=os.environ.get("DEMO_API_HOST", "127.0.0.1"))
    parser.add_argument("--home", default=os.environ.get("DEMO_HOME", str(ROOT / "airflow_home")))
    parser.add_argument("--plan", default="sandbox")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the rollout may take")
    parser.add_argument("--exit", action="store_true", default=os.environ.get("DEMO_EXIT", "") not in ("", "0"),
                        help="exit after the run instead of keeping the UI up")
    args = parser.parse_args(argv)
    BUILD.mkdir(exist_ok=True)
    try:
        return run_demo(args)
    except Exception:
        traceback.print_exc()
        return 2


if __name__ == "__main__":
    sys.exit(main())
