"""``make demo``: one whole rollout against the sandbox on an embedded Airflow, the way production runs it.

Why not ``dag.test()``: the demo shows the real thing: scheduler, dag-processor, triggerer and
api-server (SQLite and LocalExecutor, as ``airflow standalone`` runs them), a trigger over the
REST API as the Jenkins job sends it, the prod change approved through the HITL API (by the demo as
``sre-approver``, or with DEMO_APPROVE=manual by you, in the UI), then the flag state, the evidence file and the UI with the finished run. Ctrl-C stops it all;
``--exit`` (or DEMO_EXIT=1) returns after the run, for CI smoke tests.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from urllib.parse import quote

from airflow_client.client.exceptions import ApiException

from tests.harness.env import BUILD, ROOT, ensure_sandbox, sandbox_call
from tests.harness.progress import Progress, fmt_seconds
from tests.harness.stack import (
    DAG_ID,
    TRANSIENT,
    WAITING_TI,
    WATCHER_DAG_ID,
    AirflowStack,
    port_is_free,
    run_id_for,
    state_str,
)

DEMO_PASSWORDS = {"admin": "admin"}  # the UI login printed at the end; the other users get random ones


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def build_of(image_map: dict, state: dict) -> str:
    """Which build an image map belongs to (the sandbox knows the previous and the new one)."""
    for which in ("new", "previous"):
        if image_map == state["images"][which]:
            return f"{state['builds'][which]} ({which})"
    return f"unknown map {image_map}"


def reload_counts(state: dict) -> tuple[int, int]:
    """(reloads the rollout's gates requested, background autorecovery reloads) in the sandbox's state.

    chlorine's ``kind`` tells them apart; the sandbox keeps the newest 500 autorecovery reloads per carrier.
    """
    kinds = [r.get("kind") for r in state.get("reloads") or []]
    return kinds.count("requested"), kinds.count("autorecovery")


def install_seconds(started: float, environ=os.environ) -> float | None:
    """Seconds ``make demo`` spent before this process started (the venv install), from DEMO_MAKE_STARTED.

    ``started`` is this process's ``time.time()`` at start; None when not run through ``make demo``.
    """
    try:
        return max(0.0, started - float(environ["DEMO_MAKE_STARTED"]))
    except (KeyError, ValueError):
        return None


def gate_counts(detail: dict | None) -> list[str]:
    """What each gate counted, from the status page's data of the run (``/rollout-status/api/runs/<id>``)."""
    out = []
    for gate in (detail or {}).get("gates") or []:
        if gate.get("kind") == "reloads":
            out.append(f"{gate.get('carrier') or gate.get('title')} {gate.get('succeeded_with_new_image')}/"
                       f"{gate.get('required')}")
        elif gate.get("kind") == "soak":
            out.append(f"canary soak {gate.get('autorecovery_reloads')}/{gate.get('required_reloads')} autorecovery")
    return out


def status_detail(stack, run_id: str) -> dict | None:
    """The run's status-page JSON as admin, or None (the summary then leaves the gates' counts out)."""
    import json
    import urllib.request

    url = f"{stack.base_url}/rollout-status/api/runs/{quote(run_id, safe='')}"
    try:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {stack.rest('admin').token()}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def print_outcome(state: dict, run_id: str, base_url: str, out=print, gates: list[str] | None = None) -> None:
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
    requested, background = reload_counts(state)
    out(f"\npromotions: {len(promotions)}, slack messages: {len(state.get('slack') or [])}")
    if gates:
        out(f"reloads the gates counted (with the new image, of required): {'; '.join(gates)}")
    out(f"  reloads the gates requested from chlorine (when autorecovery was too slow): {requested}")
    out(f"background autorecovery reloads in the sandbox (every carrier, all along; not the gates' count): "
        f"{background}")
    out(f"\nUI: {base_url}/dags/{DAG_ID}/runs/{run_id}   (login: admin / {DEMO_PASSWORDS['admin']})")


APPROVE_MODES = ("auto", "manual")
#: The HITL task a person answers, as the rollout's Slack message links it (``rollout_dag.approval_link``).
REQUIRED_ACTION = "{base}/dags/{dag}/runs/{run}/tasks/{task}/required_actions"


class Approvals:
    """The rollout's one human step, on each poll of the run.

    ``auto``: the demo answers every open request as ``user`` through the HITL REST API (what a
    person would click). ``manual``: it answers nothing; it says once where to click (the task's
    Required action, the run, the login) and then, every ``remind_every`` seconds while a request is
    open, that it is still waiting and for how long; it reports who answered once somebody did.
    """

    def __init__(self, stack, run_id: str, mode: str, progress: Progress, *, user: str = "sre-approver",
                 out=print, remind_every: float = 60.0, clock=time.monotonic):
        if mode not in APPROVE_MODES:
            raise ValueError(f"DEMO_APPROVE must be one of {', '.join(APPROVE_MODES)}, not {mode!r}")
        self.stack, self.run_id, self.mode, self.progress = stack, run_id, mode, progress
        self.user, self.out, self.remind_every, self.clock = user, out, remind_every, clock
        self.answered: list[dict] = []
        self.asked: dict[str, float] = {}  # task key -> when the demo first saw it open
        self._reminded: dict[str, float] = {}

    def __call__(self, tis: list) -> None:
        self.progress.update(tis)
        waiting = any(state_str(ti.state) == "awaiting_input" for ti in tis)
        if self.mode == "auto":
            if waiting:
                try:
                    self._answer()
                except TRANSIENT:  # a busy api-server: the next poll answers
                    pass
            return
        if waiting or self.asked.keys() - {a["key"] for a in self.answered}:
            self._watch()

    def _answer(self) -> None:
        for pending in self.stack.pending_approvals(self.run_id, user=self.user):
            self.out(f"  [{self.progress.elapsed():>6}]     ... approval requested: {pending.subject}")
        for answer in self.stack.approve_pending(self.run_id, option="Approve", user=self.user):
            self.answered.append({**answer, "key": answer["task_id"]})
            who = answer["responded_by"]
            self.out(f"  [{self.progress.elapsed():>6}]     ... {answer['task_id']}: {answer['chosen'][0]} by "
                     f"{who['name']} (id {who['id']}) through PATCH .../hitlDetails")

    def _watch(self) -> None:
        try:
            page = self.stack.rest("admin").task_instances.get_hitl_details(DAG_ID, self.run_id)
        except TRANSIENT:  # a busy api-server: the next poll looks again
            return
        now = self.clock()
        for detail in page.hitl_details:
            ti = detail.task_instance
            key = ti.task_id + (f"[{ti.map_index}]" if ti.map_index is not None and ti.map_index >= 0 else "")
            if detail.response_received:
                if key in self.asked and key not in {a["key"] for a in self.answered}:
                    who = detail.responded_by_user
                    answer = {"key": key, "task_id": ti.task_id, "chosen": list(detail.chosen_options or []),
                              "responded_by": {"id": who.id, "name": who.name} if who else None,
                              "responded_at": detail.responded_at}
                    self.answered.append(answer)
                    self.out(f"  [{self.progress.elapsed():>6}]     ... {ti.task_id}: "
                             f"{', '.join(answer['chosen'])} by {who.name if who else '?'} after "
                             f"{fmt_seconds(now - self.asked[key])}; the rollout goes on")
                continue
            if state_str(ti.state) not in WAITING_TI:
                continue
            if key not in self.asked:
                self.asked[key] = self._reminded[key] = now
                self.out(self.where_to_click(detail))
            elif now - self._reminded[key] >= self.remind_every:
                self._reminded[key] = now
                self.out(f"  [{self.progress.elapsed():>6}]     ... still waiting for a person to answer "
                         f"{ti.task_id} ({fmt_seconds(now - self.asked[key])} so far; no time limit)")

    def where_to_click(self, detail) -> str:
        ti = detail.task_instance
        base = self.stack.base_url
        users = [u.get("id") if isinstance(u, dict) else getattr(u, "id", u) for u in detail.assigned_users or []]
        who = " or ".join(f"{u} / {self.stack.passwords[u]}" if u in self.stack.passwords else str(u)
                          for u in users) or f"{self.user} / {self.stack.passwords.get(self.user, '?')}"
        return "\n".join([
            f"  [{self.progress.elapsed():>6}]     ... approval requested: {detail.subject}",
            "",
            "  >>> Your turn: the prod start is the one human step. Log in as " + who + ", then answer:",
            "  >>>   " + REQUIRED_ACTION.format(base=base, dag=DAG_ID, run=quote(self.run_id, safe=""),
                                               task=ti.task_id),
            f"  >>>   (or Browse -> Required actions: {base}/required_actions; the run: "
            f"{base}/dags/{DAG_ID}/runs/{quote(self.run_id, safe='')})",
            "  >>> The demo waits for your answer, with no time limit (Ctrl-C stops it).",
            "",
        ])


def follow_rollout(stack, run_id: str, progress: Progress, *, approve: str = "auto", timeout: float = 900,
                   out=print, remind_every: float = 60.0, interval: float = 2.0) -> tuple[str, Approvals]:
    """Poll the run until it ends, printing its progress, and play (or wait for) the approver.

    With ``approve="manual"`` there is no timeout: the run waits for a person, however long.
    Returns the run's final state and what happened to the approvals.
    """
    approvals = Approvals(stack, run_id, approve, progress, out=out, remind_every=remind_every)
    final = stack.wait_run(run_id, timeout=math.inf if approve == "manual" else timeout, on_poll=approvals,
                           interval=interval)
    return final, approvals


def wall_times(install: float | None, setup: float, rollout: float, demo: float) -> str:
    """The demo's time, split: what a first ``make demo`` spends installing is not the rollout's."""
    parts = [f"install (make venv: pip install -r requirements.txt) "
             f"{fmt_seconds(install) if install is not None else 'not measured (not run by make demo)'}",
             f"Airflow start (db migrate, components, DAG parsed) {fmt_seconds(setup)}",
             f"rollout {fmt_seconds(rollout)} (trigger to the run's end, approval wait included)"]
    total = demo + (install or 0.0)
    return "wall time: " + "; ".join(parts) + f"; total {fmt_seconds(total)}"


def start_airflow(stack, args, home: Path, started: float) -> None:
    """Start Airflow's components and unpause the rollout DAG, saying what runs where (the demo's first
    lines), so a person watching knows where to log in and where the logs are."""
    if args.approve == "manual":
        print("DEMO_APPROVE=manual: you give the prod start in the UI; the demo waits for you "
              f"(log in as sre-approver / {stack.passwords['sre-approver']})")
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


def trigger_as_jenkins(stack, build: str) -> float:
    """Trigger the rollout the way the Jenkins job does (the curl shown), then POST it again to show one
    rollout per build. Returns when it was triggered (monotonic), where the rollout's time starts."""
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
    return triggered


def bake_detail(stack, run_id: str):
    """The progress line's detail for a task: the bake's end time while it waits, nothing for the rest."""

    def detail(key: str, state: str) -> str:
        if key == "bake.wait_bake":
            try:
                return f"until {stack.xcom(run_id, 'bake.bake_until')}"
            except Exception:
                return ""
        return ""

    return detail


def run_demo(args) -> int:
    started = time.monotonic()
    install = install_seconds(time.time())
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
        start_airflow(stack, args, home, started)
        run_id = run_id_for(build)
        triggered = trigger_as_jenkins(stack, build)
        progress = Progress(args.plan, triggered, detail=bake_detail(stack, run_id))
        final, _approvals = follow_rollout(stack, run_id, progress, approve=args.approve, timeout=args.timeout)
        progress.update(stack.task_instances(run_id))
        rollout_seconds = time.monotonic() - triggered
        print(f"\nrun {run_id}: {final} after {fmt_seconds(rollout_seconds)}")
        if final != "success":
            bad = {k: s for k, s in stack.task_states(run_id).items() if s in ("failed", "upstream_failed")}
            print(f"tasks not successful: {bad}; task logs under {home / 'logs'}")
        print_outcome(sandbox_call(sandbox_url, "/_sandbox/state"), run_id, stack.base_url,
                      gates=gate_counts(status_detail(stack, run_id)))
        peak = stack.peak_rss
        print("\n" + wall_times(install, triggered - started, rollout_seconds,
                                 time.monotonic() - started))
        print(f"peak memory of the Airflow processes: {peak.get('rss_mb')} MB RSS ({peak.get('pss_mb')} MB PSS) "
              f"over {peak.get('processes')} processes")
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
    parser.add_argument("--approve", choices=APPROVE_MODES, default=os.environ.get("DEMO_APPROVE") or "auto",
                        help="auto: the demo answers the prod start as sre-approver; manual: a person does, in the UI")
    parser.add_argument("--exit", action="store_true", default=os.environ.get("DEMO_EXIT", "") not in ("", "0"),
                        help="exit after the run instead of keeping the UI up")
    args = parser.parse_args(argv)
    if args.approve not in APPROVE_MODES:  # argparse does not check a default taken from the environment
        parser.error(f"DEMO_APPROVE must be one of {', '.join(APPROVE_MODES)}, not {args.approve!r}")
    BUILD.mkdir(exist_ok=True)
    try:
        return run_demo(args)
    except Exception:
        traceback.print_exc()
        return 2


if __name__ == "__main__":
    sys.exit(main())
