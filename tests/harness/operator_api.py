"""What an operator does to a running rollout, over the same HTTP APIs a person or a script would use.

``Operator``: one Airflow user on the api-server's public REST API (a JWT from ``POST /auth/token``):
trigger a run, read task states, mark a task instance success (``PATCH .../taskInstances/{task}``),
clear task instances (``POST .../clearTaskInstances``), answer a Human-in-the-loop request
(``PATCH .../taskInstances/{task}/{map_index}/hitlDetails``), set and delete Variables, stop a run.
Every call answers ``(status, body)`` instead of raising, because a refusal (403, 409) is often the
thing under test.

``SandboxControl``: the sandbox's control endpoints (reset with a body, faults, state) and the
out-of-band changes a person makes in the systems of record: a LaunchDarkly rule set by hand through
the LaunchDarkly API, a commit pushed by hand to the evidence repository.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any

import requests

from tests.harness.stack import DAG_ID, TERMINAL_RUN, TERMINAL_TI, wait_for

HITL_WAITING = {"deferred", "awaiting_input"}


class ApiError(AssertionError):
    """An operator call that should have worked did not (status and body in the message)."""


class Operator:
    """One Airflow user on the public REST API.

    :param base_url: the api-server, e.g. ``http://localhost:8080``.
    :param username: a simple-auth-manager user (``admin``, ``jenkins``, ``sre-approver``).
    """

    def __init__(self, base_url: str, username: str, password: str, *, dag_id: str = DAG_ID, timeout: float = 30):
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self.dag_id = dag_id
        self.timeout = timeout
        self._token: str | None = None
        self._token_at = 0.0
        self.session = requests.Session()

    @classmethod
    def of(cls, stack: Any, username: str) -> Operator:
        """The operator ``username`` of an ``AirflowStack`` (its passwords)."""
        return cls(stack.base_url, username, stack.passwords[username])

    # -- transport ---------------------------------------------------------------------------------
    def token(self) -> str:
        if self._token is None or time.monotonic() - self._token_at > 1800:
            resp = self.session.post(f"{self.base_url}/auth/token", timeout=self.timeout,
                                     json={"username": self.username, "password": self._password})
            if resp.status_code not in (200, 201):
                raise ApiError(f"{self.username}: /auth/token answered {resp.status_code}: {resp.text[:300]}")
            self._token = resp.json()["access_token"]
            self._token_at = time.monotonic()
        return self._token

    def call(self, method: str, path: str, body: Any = None, params: dict | None = None) -> tuple[int, Any]:
        """``method`` on ``/api/v2`` + ``path`` as this user; returns ``(status, JSON body or text)``."""
        resp = self.session.request(method, f"{self.base_url}/api/v2{path}", json=body, params=params,
                                    headers={"Authorization": f"Bearer {self.token()}"}, timeout=self.timeout)
        try:
            payload = resp.json() if resp.content else None
        except ValueError:
            payload = resp.text
        return resp.status_code, payload

    def ok(self, method: str, path: str, body: Any = None, params: dict | None = None) -> Any:
        """Like ``call`` but a non-2xx answer is an ``ApiError``."""
        status, payload = self.call(method, path, body, params)
        if not 200 <= status < 300:
            raise ApiError(f"{self.username}: {method} {path} answered {status}: {str(payload)[:500]}")
        return payload

    def _run_path(self, run_id: str) -> str:
        return f"/dags/{self.dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    @staticmethod
    def _task(task_id: str) -> str:
        return urllib.parse.quote(task_id, safe="")

    # -- runs --------------------------------------------------------------------------------------
    def trigger(self, run_id: str, conf: dict) -> tuple[int, Any]:
        """What the Jenkins job does: POST a run with a chosen run id and ``conf``."""
        return self.call("POST", f"/dags/{self.dag_id}/dagRuns",
                         {"dag_run_id": run_id, "logical_date": None, "conf": conf})

    def run_state(self, run_id: str) -> str | None:
        status, body = self.call("GET", self._run_path(run_id))
        return body.get("state") if status == 200 else None

    def set_run_state(self, run_id: str, state: str) -> tuple[int, Any]:
        """``failed`` stops a run (its running tasks are killed, deferred ones lose their trigger)."""
        return self.call("PATCH", self._run_path(run_id), {"state": state})

    def end_run(self, run_id: str, *, timeout: float = 60) -> None:
        """End a test's run for good (marked failed, as an operator would), so it writes nothing more.

        Airflow 3.3.2 can answer the PATCH with a 500 while the scheduler updates the same run (seen under
        load); like an operator, try again until the run has ended.
        """
        deadline = time.monotonic() + timeout
        while self.run_state(run_id) not in (None, *TERMINAL_RUN):
            status, body = self.set_run_state(run_id, "failed")
            if 200 <= status < 300:
                return
            if time.monotonic() > deadline:
                raise ApiError(f"{self.username}: could not end run {run_id}: {status} {str(body)[:300]}")
            time.sleep(1)

    # -- task instances ----------------------------------------------------------------------------
    def task_instances(self, run_id: str) -> list[dict]:
        out: list[dict] = []
        while True:
            page = self.ok("GET", f"{self._run_path(run_id)}/taskInstances",
                           params={"limit": 100, "offset": len(out)})
            out += page["task_instances"]
            if not page["task_instances"] or len(out) >= page["total_entries"]:
                return out

    def task_states(self, run_id: str) -> dict[str, str | None]:
        """``task_id`` (``task_id[i]`` for mapped ones) -> state."""
        def key(ti: dict) -> str:
            index = ti.get("map_index")
            return ti["task_id"] + (f"[{index}]" if index is not None and index >= 0 else "")

        return {key(ti): ti["state"] for ti in self.task_instances(run_id)}

    def task_state(self, run_id: str, task_id: str, map_index: int = -1) -> str | None:
        suffix = f"/{map_index}" if map_index >= 0 else ""
        status, body = self.call("GET", f"{self._run_path(run_id)}/taskInstances/{self._task(task_id)}{suffix}")
        return body.get("state") if status == 200 else None

    def mark(self, run_id: str, task_id: str, state: str = "success", *, note: str | None = None,
             map_index: int = -1) -> tuple[int, Any]:
        """Mark a task instance (the UI's "Mark as success/failed"): ``PATCH`` its state."""
        suffix = f"/{map_index}" if map_index >= 0 else ""
        body: dict = {"new_state": state}
        if note:
            body["note"] = note
        return self.call("PATCH", f"{self._run_path(run_id)}/taskInstances/{self._task(task_id)}{suffix}", body)

    def clear(self, run_id: str, task_ids: Iterable[str], *, include_downstream: bool = True,
              only_failed: bool = False) -> tuple[int, Any]:
        """The UI's "Clear" on task instances of one run (downstream too, as the UI defaults)."""
        return self.call("POST", f"/dags/{self.dag_id}/clearTaskInstances", {
            "dry_run": False, "dag_run_id": run_id, "task_ids": list(task_ids), "only_failed": only_failed,
            "include_downstream": include_downstream, "reset_dag_runs": True,
        })

    # -- Human-in-the-loop -------------------------------------------------------------------------
    def hitl_details(self, run_id: str, *, pending_only: bool = True) -> list[dict]:
        params = {"response_received": "false"} if pending_only else {}
        body = self.ok("GET", f"{self._run_path(run_id)}/hitlDetails", params=params)
        return list(body.get("hitl_details") or [])

    def pending_hitl(self, run_id: str) -> list[dict]:
        """Unanswered requests whose task is parked waiting for the answer."""
        return [d for d in self.hitl_details(run_id)
                if (d.get("task_instance") or {}).get("state") in HITL_WAITING]

    def answer_hitl(self, run_id: str, task_id: str, options: list[str] | str, *, map_index: int = -1,
                    params_input: dict | None = None) -> tuple[int, Any]:
        """Answer one HITL request as this user (the Required Actions page does the same PATCH)."""
        chosen = [options] if isinstance(options, str) else list(options)
        return self.call("PATCH",
                         f"{self._run_path(run_id)}/taskInstances/{self._task(task_id)}/{map_index}/hitlDetails",
                         {"chosen_options": chosen, "params_input": params_input or {}})

    # -- Variables ---------------------------------------------------------------------------------
    def set_variable(self, key: str, value: Any, description: str | None = None) -> Any:
        text = value if isinstance(value, str) else json.dumps(value)
        status, body = self.call("PATCH", f"/variables/{urllib.parse.quote(key, safe='')}",
                                 {"key": key, "value": text, "description": description})
        if status == 404:
            return self.ok("POST", "/variables", {"key": key, "value": text, "description": description})
        if not 200 <= status < 300:
            raise ApiError(f"{self.username}: set Variable {key} answered {status}: {str(body)[:300]}")
        return body

    def delete_variable(self, key: str) -> int:
        status, _ = self.call("DELETE", f"/variables/{urllib.parse.quote(key, safe='')}")
        return status

    # -- waits -------------------------------------------------------------------------------------
    def wait_task(self, run_id: str, task_id: str, states: Iterable[str], *, timeout: float = 180,
                  map_index: int = -1, interval: float = 1.0, fail_on_terminal: bool = True) -> str:
        """Until the task instance is in one of ``states``; its state. Fails early if it ended otherwise."""
        wanted = set(states)
        seen: dict = {}

        def reached() -> str | None:
            try:
                state = self.task_state(run_id, task_id, map_index)
            except (OSError, ValueError, requests.RequestException):
                return None
            seen["state"] = state
            if state in wanted:
                return state
            if fail_on_terminal and state in TERMINAL_TI:
                raise AssertionError(f"{task_id} ended {state} while waiting for {sorted(wanted)}")
            return None

        return wait_for(reached, timeout=timeout, interval=interval,
                        what=lambda: f"{task_id} in {sorted(wanted)} (now {seen.get('state')})")

    def wait_run(self, run_id: str, *, timeout: float = 300, interval: float = 2.0) -> str:
        seen: dict = {}

        def finished() -> str | None:
            seen["state"] = self.run_state(run_id)
            return seen["state"] if seen["state"] in TERMINAL_RUN else None

        return wait_for(finished, timeout=timeout, interval=interval,
                        what=lambda: f"run {run_id} finished (now {seen.get('state')})")


class SandboxControl:
    """The sandbox's control endpoints, and changes made by hand in the systems it stands in for."""

    LD_FLAG = "/launchdarkly/api/v2/flags/default/worker-image"
    SEMANTIC_PATCH = "application/json; domain-model=launchdarkly.semanticpatch"
    GITHUB_REPO = "/github/api/v3/repos/alchemy-conductors/team"

    def __init__(self, base_url: str, timeout: float = 15):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _json(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> Any:
        resp = self.session.request(method, f"{self.base_url}{path}", timeout=self.timeout,
                                    data=None if body is None else json.dumps(body),
                                    headers={"Content-Type": "application/json", **(headers or {})})
        if not 200 <= resp.status_code < 300:
            raise ApiError(f"sandbox {method} {path} answered {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else {}

    # -- control -----------------------------------------------------------------------------------
    def reset(self, body: dict | None = None) -> dict:
        return self._json("POST", "/_sandbox/reset", body or {})

    def faults(self, *names: str) -> dict:
        """Add faults (the active set grows); an unknown name is an ``ApiError`` naming it."""
        return self._json("POST", "/_sandbox/faults", {"faults": list(names)})

    def try_faults(self, *names: str) -> bool:
        """Add faults if this sandbox knows them all; False (nothing added) when it refuses one."""
        resp = self.session.post(f"{self.base_url}/_sandbox/faults", json={"faults": list(names)},
                                 timeout=self.timeout)
        if resp.status_code == 400:
            return False
        if not 200 <= resp.status_code < 300:
            raise ApiError(f"sandbox POST /_sandbox/faults answered {resp.status_code}: {resp.text[:300]}")
        return True

    def slack_click(self, ts: str, action: str, user: str, url: str | None = None) -> dict:
        """A Slack user clicks a button of the message ``ts``; the sandbox delivers it, signed, to ``url``."""
        body = {"ts": ts, "action": action, "user": user, **({"url": url} if url else {})}
        return self._json("POST", "/_sandbox/slack/click", body)

    def clear_faults(self) -> dict:
        return self._json("DELETE", "/_sandbox/faults")

    def state(self, *, autorecovery: bool = False) -> dict:
        return self._json("GET", "/_sandbox/state" + ("" if autorecovery else "?autorecovery=0"))

    # -- LaunchDarkly, by hand ---------------------------------------------------------------------
    def flag(self) -> dict:
        return self._json("GET", self.LD_FLAG)

    def set_rule(self, target: str, image_map: dict, comment: str = "set by hand") -> dict:
        """Point ``target``'s rule at ``image_map`` through the LaunchDarkly API, as a person in its UI would.

        Adds the variation first when no variation has that value.
        """
        flag = self.flag()
        env = flag["environments"]["production"]
        rule = next((r for r in env["rules"] if target in (r.get("ref"), r.get("description"))), None)
        if rule is None:
            raise ApiError(f"no rule for {target} in the flag")
        variation = next((v for v in flag["variations"] if v["value"] == image_map), None)
        headers = {"Content-Type": self.SEMANTIC_PATCH}
        if variation is None:
            self._json("PATCH", self.LD_FLAG, {"environmentKey": "production", "comment": comment,
                                               "instructions": [{"kind": "addVariation", "value": image_map}]},
                       headers)
            flag = self.flag()
            variation = next(v for v in flag["variations"] if v["value"] == image_map)
        return self._json("PATCH", self.LD_FLAG, {
            "environmentKey": "production", "comment": comment,
            "instructions": [{"kind": "updateRuleVariationOrRollout", "ruleId": rule["_id"],
                              "variationId": variation["_id"]}],
        }, headers)

    # -- GitHub, by hand ---------------------------------------------------------------------------
    def commit_file(self, path: str, text: str, message: str) -> str:
        """Commit ``text`` at ``path`` on master through the GitHub API; the commit sha."""
        quoted = urllib.parse.quote(path)
        sha = None
        resp = self.session.get(f"{self.base_url}{self.GITHUB_REPO}/contents/{quoted}", params={"ref": "master"},
                                timeout=self.timeout)
        if resp.status_code == 200:
            sha = resp.json().get("sha")
        body = {"message": message, "content": base64.b64encode(text.encode()).decode(), "branch": "master",
                "committer": {"name": "A Person", "email": "person@example.com"}}
        if sha:
            body["sha"] = sha
        return self._json("PUT", f"{self.GITHUB_REPO}/contents/{quoted}", body)["commit"]["sha"]
