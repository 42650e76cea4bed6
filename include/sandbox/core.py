"""The sandbox's state and simulation: one object, one lock, advanced by a ticker and by every request.

The HTTP handlers (one module per system) only translate requests into calls on `Sandbox`;
everything that changes over time (reloads finishing, autorecovery, change-board decisions,
rebuilds, reports) happens here, under `Sandbox.lock`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import threading
import time
from collections import Counter, deque
from datetime import UTC, datetime

from include.sandbox import seed

TIMING_DEFAULTS = {
    "reload_seconds": 1.0,
    "autorecovery_interval_seconds": 0.5,
    "approval_delay_seconds": 2.0,
    "report_interval_seconds": 2.0,
    "rebuild_seconds": 1.0,
    "queue_seconds": 1.0,
}
TICK_SECONDS = 0.1
SLOW_FACTOR = 20
#: Autorecovery reloads kept per carrier (older ones are dropped so a long-running sandbox stays small).
AUTORECOVERY_KEEP = 500
REPORT_BUILDS_KEEP = 50

#: Faults that fail the next N matching calls, then clear.
TRANSIENT_FAULTS = {"jenkins_5xx": 3, "flags_5xx": 3, "github_5xx": 3, "flags_conflict": 2, "github_conflict": 2,
                    "flags_lost_response": 1, "github_lost_response": 1, "jenkins_lost_response": 1}
#: Faults that stay until DELETE /_sandbox/faults (or a reset).
PLAIN_FAULTS = {"jenkins_build_failed", "jenkins_build_timeout", "train_rejected", "slack_down", "pagerduty_5xx"}

#: The LaunchDarkly member behind the rollout's API token (the requester of every approval request).
ROLLOUT_MEMBER = "sandbox-rollout"
#: The change board's identities: non-prod trains are approved at once, prod trains after the delay.
AUTO_APPROVER = "razee-auto-approver"
CHANGE_BOARD = "change-board"
#: The environment's approval settings at reset (LaunchDarkly's ApprovalSettings field names).
DEFAULT_APPROVAL_SETTINGS = {
    "required": False,
    "bypassApprovalsForPendingChanges": False,
    "minNumApprovals": 1,
    "canReviewOwnRequest": False,
    "canApplyDeclinedChanges": False,
    "autoApplyApprovedChanges": False,
    "serviceKind": "launchdarkly",
    "serviceConfig": {},
    "requiredApprovalTags": [],
    "resourceKind": "environment",
}
_SETTING_TYPES = {"required": bool, "bypassApprovalsForPendingChanges": bool, "minNumApprovals": int,
                  "canReviewOwnRequest": bool, "canApplyDeclinedChanges": bool, "autoApplyApprovedChanges": bool,
                  "serviceKind": str, "serviceConfig": dict, "requiredApprovalTags": list, "resourceKind": str,
                  "serviceKindConfigurationId": str}
#: Faults that take an argument, and what the argument names.
ARG_FAULTS = {"reload_fail": "carrier", "autorecovery_failed_alert": "region", "autorecovery_slow": "region"}


class SandboxError(Exception):
    """A request the sandbox refuses; carries the HTTP status and the message for the system's error body."""

    def __init__(self, status: int, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def iso(t: float | None) -> str | None:
    """ISO-8601 UTC with milliseconds: compressed timings need sub-second order."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def epoch_ms(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


def parse_time(value: str) -> float:
    """Accept ISO-8601 (with or without fraction, Z or offset) or epoch seconds/ms."""
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        return number / 1000 if number > 1e11 else number
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError as exc:
        raise SandboxError(400, f"invalid time {value!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def env_timing() -> dict[str, float]:
    """Timing defaults, overridable per key by SANDBOX_<KEY> (e.g. SANDBOX_RELOAD_SECONDS)."""
    timing = dict(TIMING_DEFAULTS)
    for key in timing:
        raw = os.environ.get(f"SANDBOX_{key.upper()}")
        if raw:
            timing[key] = float(raw)
    return timing


def blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _reset_approval_settings(given: dict | None) -> dict:
    """DEFAULT_APPROVAL_SETTINGS with the reset's `launchdarkly.approvalSettings` over them, each field checked."""
    settings = copy.deepcopy(DEFAULT_APPROVAL_SETTINGS)
    if given is None:
        return settings
    if not isinstance(given, dict):
        raise SandboxError(400, "launchdarkly.approvalSettings must be an object")
    for key, value in given.items():
        kind = _SETTING_TYPES.get(key)
        if kind is None:
            raise SandboxError(400, f"unknown approvalSettings field: {key}")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise SandboxError(400, f"approvalSettings.{key} must be {kind.__name__}")
        settings[key] = copy.deepcopy(value)
    if settings["minNumApprovals"] < 1:
        raise SandboxError(400, "approvalSettings.minNumApprovals must be >= 1")
    return settings


def _reset_new_build(given: dict | None) -> dict[str, str]:
    """The reset's `jenkins.new_build`: raw `image_ids_json` and/or `console` text for the new build."""
    overrides: dict[str, str] = {}
    if given is None:
        return overrides
    if not isinstance(given, dict):
        raise SandboxError(400, "jenkins.new_build must be an object")
    for key, value in given.items():
        if key not in ("image_ids_json", "console"):
            raise SandboxError(400, f"unknown jenkins.new_build field: {key}")
        if not isinstance(value, str):
            raise SandboxError(400, f"jenkins.new_build.{key} must be a string (the raw text)")
        overrides[key] = value
    return overrides


def _reset_timing(given: dict | None) -> dict[str, float]:
    """The env/default timing with the reset's `timing` keys over it (known keys, numbers >= 0)."""
    merged = env_timing()
    for key, value in (given or {}).items():
        if key not in TIMING_DEFAULTS:
            raise SandboxError(400, f"unknown timing key: {key}")
        try:
            value = float(value)
        except (TypeError, ValueError) as exc:
            raise SandboxError(400, f"timing {key} must be a number") from exc
        if value < 0:
            raise SandboxError(400, f"timing {key} must be >= 0")
        merged[key] = value
    return merged


def _served_maps(flag: dict) -> dict[str, dict]:
    """Target -> the image map its rule serves, in a flag (or a copy being changed)."""
    return {r["ref"]: flag["variations"][r["variation"]]["value"]
            for r in flag["environments"][seed.ENVIRONMENT]["rules"]}


def _update_rule(flag: dict, i: int, ins: dict) -> str:
    """`updateRuleVariationOrRollout` on the flag copy (one variation, no percentages); the rule's target."""
    rule = next((r for r in flag["environments"][seed.ENVIRONMENT]["rules"] if r["_id"] == ins.get("ruleId")),
                None)
    if rule is None:
        raise SandboxError(400, f"instruction {i}: unknown ruleId {ins.get('ruleId')!r}")
    if "rolloutWeights" in ins and "variationId" not in ins:
        raise SandboxError(400, f"instruction {i}: percentage rollouts are not supported here")
    index = next(
        (n for n, v in enumerate(flag["variations"]) if v["_id"] == ins.get("variationId")), None
    )
    if index is None:
        raise SandboxError(400, f"instruction {i}: unknown variationId {ins.get('variationId')!r}")
    rule["variation"] = index
    return rule["ref"]


class Sandbox:
    """All six systems' state plus the clock-driven simulation. Use `with sb.lock:` around every access."""

    def __init__(self, timing: dict | None = None, *, ticker: bool = True) -> None:
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.reset(timing)
        if ticker:
            self._ticker = threading.Thread(target=self._tick_loop, name="sandbox-ticker", daemon=True)
            self._ticker.start()

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)

    def _tick_loop(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            with self.lock:
                self.advance()

    def reset(self, timing: dict | None = None, rng_seed: int | None = None, *,
              approval_settings: dict | None = None, new_build: dict | None = None) -> None:
        """Fresh seed state (API.md "Seed"); timing keys not given fall back to the env/default values.

        `approval_settings` (LaunchDarkly field names) are merged over DEFAULT_APPROVAL_SETTINGS;
        `new_build` may replace the new build's `image_ids_json` artifact and `console` text (raw).
        """
        if rng_seed is not None and not isinstance(rng_seed, int | str):
            raise SandboxError(400, "seed must be an integer or a string")
        settings = _reset_approval_settings(approval_settings)
        overrides = _reset_new_build(new_build)
        merged = _reset_timing(timing)
        with self.lock:
            now = time.time()
            self.timing = merged
            self.approval_settings = settings
            self.new_build_overrides = overrides
            self.jenkins_sessions: dict[str, str] = {}
            self.rng = random.Random(rng_seed)
            self.reset_at = now
            self.faults: dict[str, int | None] = {}
            self.faults_applied: list[str] = []
            self.calls: Counter[str] = Counter()
            self.faulted_calls: Counter[str] = Counter()
            self._seed_flag(now)
            self.promotions: list[dict] = []
            self.approvals: dict[str, dict] = {}
            self._approval_meta: dict[str, dict] = {}
            self._seed_jenkins(now)
            self._seed_github(now)
            self._seed_chlorine(now)
            self.incidents: list[dict] = []
            self._incident_number = 48211
            self.slack: list[dict] = []
            self.slack_response_urls: dict[str, dict] = {}

    # ------------------------------------------------------------------ faults

    def set_faults(self, names: list) -> list[str]:
        """Validate every name first (400 naming the first bad one), then add them to the active set."""
        if not isinstance(names, list):
            raise SandboxError(400, 'body must be {"faults": ["name", "name:arg", ...]}')
        parsed = []
        with self.lock:
            valid_carriers = set(self.carriers)
        for raw in names:
            if not isinstance(raw, str):
                raise SandboxError(400, f"unknown fault: {raw!r}")
            name, _, arg = raw.strip().partition(":")
            if name in ARG_FAULTS:
                what = ARG_FAULTS[name]
                valid = valid_carriers if what == "carrier" else seed.TARGET_NAMES
                if arg not in valid:
                    raise SandboxError(400, f"fault {raw!r}: unknown {what} {arg!r} (expected {name}:<{what}>)")
            elif name in TRANSIENT_FAULTS or name in PLAIN_FAULTS:
                if arg:
                    raise SandboxError(400, f"fault {raw!r}: {name} takes no argument")
            else:
                raise SandboxError(400, f"unknown fault: {raw}")
            parsed.append((raw.strip(), name, arg))
        with self.lock:
            for full, name, arg in parsed:
                self.faults[full] = TRANSIENT_FAULTS.get(name)
                self.faults_applied.append(full)
                if name in ("jenkins_build_failed", "jenkins_build_timeout"):
                    self._apply_build_fault()
                elif name == "autorecovery_slow":
                    interval = self.timing["autorecovery_interval_seconds"] * SLOW_FACTOR
                    for carrier in self.targets[arg]["carriers"]:
                        self._next_autorecovery[carrier] = self._last_autorecovery[carrier] + interval
            return self.active_faults()

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def active_faults(self) -> list[str]:
        return list(self.faults)

    def has_fault(self, name: str) -> bool:
        return name in self.faults

    def consume_fault(self, name: str) -> bool:
        """True (and one use spent) when the transient fault `name` is armed."""
        remaining = self.faults.get(name, 0)
        if not remaining:
            return False
        if remaining <= 1:
            del self.faults[name]
        else:
            self.faults[name] = remaining - 1
        return True

    # ------------------------------------------------------------------ clock

    def advance(self, now: float | None = None) -> None:
        """Bring the simulation up to `now`: the ticker calls it every 0.1 s, every request calls it first."""
        now = time.time() if now is None else now
        for reload in [r for r in self._pending if r["finish_at"] <= now]:
            self._finish_reload(reload, now)
        self._autorecovery_due(now)
        self._decide_due(now)
        for item in [q for q in self.queue.values() if q["number"] is None and q["start_at"] <= now]:
            self._start_queued(item, now)
        for build in [b for job in self.jobs.values() for b in job["builds"].values() if b["building"]]:
            if build["finish_at"] <= now:
                self._finish_build(build, now)
        interval = self.timing["report_interval_seconds"]
        if interval > 0 and now >= self._next_report:
            self.publish_report(now)
            self._next_report += interval
            if self._next_report <= now:
                self._next_report = now + interval

    # ------------------------------------------------------------------ flag

    def _seed_flag(self, now: float) -> None:
        variations = [
            {"_id": seed.stable_id("variation", m), "name": name, "description": f"immutable image build {name}",
             "value": dict(m)}
            for name, m in ((seed.PREVIOUS_BUILD, seed.PREVIOUS_MAP), (seed.NEW_BUILD, seed.NEW_MAP))
        ]
        rules = [
            {
                "_id": seed.stable_id("rule", target),
                "ref": target,
                "description": target,
                "variation": 0,
                "clauses": [
                    {"_id": seed.stable_id("clause", target), "attribute": "target", "op": "in",
                     "values": [target], "negate": False}
                ],
                "trackEvents": False,
            }
            for target in seed.TARGET_NAMES
        ]
        flag_path = f"/api/v2/flags/{seed.PROJECT}/{seed.FLAG_KEY}"
        self.flag = {
            "key": seed.FLAG_KEY,
            "name": seed.FLAG_KEY,
            "description": "SoftLayer image ids of the carrier worker image, per environment",
            "kind": "multivariate",
            "_version": 1,
            "creationDate": epoch_ms(now - 86400 * 900),
            "includeInSnippet": False,
            "clientSideAvailability": {"usingMobileKey": False, "usingEnvironmentId": False},
            "temporary": False,
            "archived": False,
            "deprecated": False,
            "tags": ["armada", "worker-image"],
            "maintainerId": seed.stable_id("member", "conductors"),
            "goalIds": [],
            "customProperties": {},
            "experiments": {"baselineIdx": 0, "items": []},
            "defaults": {"onVariation": 0, "offVariation": 0},
            "_links": {"parent": {"href": f"/api/v2/flags/{seed.PROJECT}", "type": "application/json"},
                       "self": {"href": flag_path, "type": "application/json"}},
            "variations": variations,
            "environments": {
                seed.ENVIRONMENT: {
                    "_environmentName": "Production",
                    "_site": {"href": f"/{seed.PROJECT}/{seed.ENVIRONMENT}/features/{seed.FLAG_KEY}",
                              "type": "text/html"},
                    "version": 1,
                    "on": True,
                    "archived": False,
                    "salt": seed.stable_id("salt", seed.FLAG_KEY).replace("-", ""),
                    "sel": seed.stable_id("sel", seed.FLAG_KEY).replace("-", ""),
                    "trackEvents": False,
                    "trackEventsFallthrough": False,
                    "offVariation": 0,
                    "fallthrough": {"variation": 0},
                    "targets": [],
                    "contextTargets": [],
                    "prerequisites": [],
                    "rules": rules,
                    "lastModified": epoch_ms(now),
                }
            },
        }

    @property
    def rules(self) -> list[dict]:
        return self.flag["environments"][seed.ENVIRONMENT]["rules"]

    def served_map(self, target: str) -> dict:
        rule = next(r for r in self.rules if r["ref"] == target)
        return self.flag["variations"][rule["variation"]]["value"]

    def build_for_map(self, image_map: dict) -> str | None:
        """Build name for an image map: a successful immutable_image build with it, else the variation name."""
        for build in sorted(self.jobs[seed.IMAGE_JOB]["builds"].values(), key=lambda b: -b["number"]):
            if build.get("image_map") == image_map and build["result"] == "SUCCESS":
                return build["display"]
        if image_map == seed.PREVIOUS_MAP:
            return seed.PREVIOUS_BUILD
        if image_map == seed.NEW_MAP:
            return seed.NEW_BUILD
        for variation in self.flag["variations"]:
            if variation["value"] == image_map:
                return variation.get("name")
        return None

    def apply_instructions(
        self, instructions: list, *, comment: str = "", request: dict | None = None, dry_run: bool = False
    ) -> list[str]:
        """Execute semantic-patch instructions atomically; returns the targets whose served map changed.

        Every changed rule is recorded as a promotion (with the approval request's fields when given).
        """
        if not isinstance(instructions, list) or not instructions:
            raise SandboxError(400, "instructions must be a non-empty list")
        flag = copy.deepcopy(self.flag)
        before = _served_maps(flag)
        touched = []
        for i, ins in enumerate(instructions):
            if not isinstance(ins, dict):
                raise SandboxError(400, f"instruction {i} is not an object")
            kind = ins.get("kind")
            if kind == "addVariation":
                self._add_variation(flag, i, ins)
            elif kind == "updateRuleVariationOrRollout":
                touched.append(_update_rule(flag, i, ins))
            else:
                raise SandboxError(400, f"instruction {i}: unsupported kind {kind!r}")
        if dry_run:
            return touched
        return self._commit_flag(flag, before, comment, request)

    def _add_variation(self, flag: dict, i: int, ins: dict) -> None:
        """`addVariation` on the flag copy: a new, non-empty value under a new id."""
        value = ins.get("value")
        if not isinstance(value, dict) or not value:
            raise SandboxError(400, f"instruction {i}: addVariation needs an object value")
        if any(v["value"] == value for v in flag["variations"]):
            raise SandboxError(400, f"instruction {i}: a variation with this value already exists")
        # `_id` may be chosen by the caller (so a later instruction of the same request can point a
        # rule at it); without one the sandbox makes a stable one.
        new_id = ins.get("_id") or seed.stable_id("variation", value)
        if not isinstance(new_id, str) or any(v["_id"] == new_id for v in flag["variations"]):
            raise SandboxError(400, f"instruction {i}: addVariation _id must be a new string id")
        flag["variations"].append(
            {"_id": new_id, "name": ins.get("name") or self.build_for_map(value),
             "description": ins.get("description", ""), "value": value}
        )

    def _commit_flag(self, flag: dict, before: dict[str, dict], comment: str, request: dict | None) -> list[str]:
        """Store the changed flag copy (new versions) and record a promotion per target whose map changed."""
        env = flag["environments"][seed.ENVIRONMENT]
        after = _served_maps(flag)
        changed = [t for t in seed.TARGET_NAMES if after[t] != before[t]]
        if changed or len(flag["variations"]) != len(self.flag["variations"]):
            now = time.time()
            flag["_version"] += 1
            env["version"] += 1
            env["lastModified"] = epoch_ms(now)
            self.flag = flag
            for target in changed:
                self._record_promotion(target, before[target], after[target], comment, request, now)
        return changed

    def _record_promotion(self, target: str, old: dict, new: dict, comment: str, request: dict | None,
                          now: float) -> None:
        config = (request or {}).get("integrationConfig")
        evidence_sha = None
        if isinstance(config, dict) and isinstance(config.get("acceptanceTests"), dict):
            evidence_sha = config["acceptanceTests"].get("hashValue")
        self.promotions.append(
            {
                "target": target,
                "build": self.build_for_map(new),
                "from_build": self.build_for_map(old),
                "image_map": dict(new),
                "from_image_map": dict(old),
                "evidence_sha": evidence_sha,
                "change_request": copy.deepcopy(config) if request else None,
                "approval": request["reviewStatus"] if request else None,
                "request_id": request["_id"] if request else None,
                "comment": comment,
                "flag_version": self.flag["_version"],
                "time": iso(now),
            }
        )
        # A new map starts the autorecovery_failed_alert count afresh (API.md PagerDuty).
        self._autorecovery_since_change[target] = 0

    # ------------------------------------------------------------------ approval requests

    def create_approval(self, body: dict) -> dict:
        instructions = body.get("instructions")
        targets = self.apply_instructions(instructions, dry_run=True)
        now = time.time()
        request_id = hashlib.sha1(f"{now}/{len(self.approvals)}/{self.rng.random()}".encode()).hexdigest()[:24]
        prod = any(seed.is_prod_target(t) for t in targets)
        path = (f"/api/v2/projects/{seed.PROJECT}/flags/{seed.FLAG_KEY}/environments/{seed.ENVIRONMENT}"
                f"/approval-requests/{request_id}")
        request = {
            "_id": request_id,
            "_version": 1,
            "creationDate": epoch_ms(now),
            "serviceKind": self.approval_settings["serviceKind"],
            "requestorId": ROLLOUT_MEMBER,
            "description": body.get("description", ""),
            "reviewStatus": "pending",
            "status": "pending",
            "allReviews": [],
            "notifyMemberIds": list(body.get("notifyMemberIds") or []),
            "instructions": copy.deepcopy(instructions),
            "operatingOnId": seed.FLAG_KEY,
            "conflicts": [],
            "_links": {"self": {"href": path, "type": "application/json"},
                       "flag": {"href": f"/api/v2/flags/{seed.PROJECT}/{seed.FLAG_KEY}", "type": "application/json"}},
            # Sandbox-only fields, kept in /_sandbox/state but never served by the LaunchDarkly API
            # (PUBLIC_APPROVAL_FIELDS): what the request was sent with, and the change board's view of it.
            "integrationConfig": copy.deepcopy(body.get("integrationConfig")),
            "environments": [{"key": seed.ENVIRONMENT, "name": "Production"}],
            "train": "prod" if prod else "non-prod",
            "targets": targets,
            "deleted": False,
        }
        self.approvals[request_id] = request
        self._approval_meta[request_id] = {"prod": prod, "decide_at": now + self.timing["approval_delay_seconds"]}
        if not prod:
            self._review(request, "approve", AUTO_APPROVER, "non-prod train: auto-approved", now)
        elif self.timing["approval_delay_seconds"] <= 0:
            self._decide(request, now)
        return request

    def _review(self, request: dict, kind: str, member: str, comment: str, now: float) -> None:
        review_id = hashlib.sha1(f"{request['_id']}/{len(request['allReviews'])}/{member}".encode()).hexdigest()[:24]
        request["allReviews"].append({"_id": review_id, "kind": kind, "memberId": member, "comment": comment,
                                      "creationDate": epoch_ms(now)})
        approvals = {r["memberId"] for r in request["allReviews"] if r["kind"] == "approve"}
        if kind == "decline":
            request["reviewStatus"] = "declined"
        elif (kind == "approve" and request["reviewStatus"] == "pending"
              and len(approvals) >= self.approval_settings["minNumApprovals"]):
            request["reviewStatus"] = "approved"
        request["_version"] += 1

    def _decide(self, request: dict, now: float) -> None:
        """The change board's decision on a prod train (declined under train_rejected)."""
        if request["reviewStatus"] != "pending" or request["deleted"]:
            return
        if any(r["memberId"] == CHANGE_BOARD for r in request["allReviews"]):
            return
        if self.has_fault("train_rejected"):
            self._review(request, "decline", CHANGE_BOARD, "Train rejected by the change board", now)
        else:
            self._review(request, "approve", CHANGE_BOARD, "Train approved by the change board", now)

    def _decide_due(self, now: float) -> None:
        for request_id, meta in self._approval_meta.items():
            request = self.approvals[request_id]
            if meta["prod"] and request["reviewStatus"] == "pending" and now >= meta["decide_at"]:
                self._decide(request, now)

    def review_approval(self, request: dict, body: dict) -> dict:
        """A review POSTed through the API: it is the token's member's (the rollout's, the requester)."""
        kind = body.get("kind")
        if kind not in ("approve", "decline", "comment"):
            raise SandboxError(400, "review kind must be approve, decline or comment")
        if request["status"] != "pending":
            raise SandboxError(400, f"approval request is {request['status']}")
        settings = self.approval_settings
        if (kind != "comment" and settings["required"] and not settings["canReviewOwnRequest"]
                and request["requestorId"] == ROLLOUT_MEMBER):
            raise SandboxError(403, "You cannot review your own approval request", "forbidden")
        now = time.time()
        meta = self._approval_meta[request["_id"]]
        if kind == "approve" and meta["prod"] and self.has_fault("train_rejected"):
            self._review(request, "comment", ROLLOUT_MEMBER, body.get("comment", ""), now)
            self._decide(request, now)
        else:
            self._review(request, kind, ROLLOUT_MEMBER, body.get("comment", ""), now)
        return request

    def apply_approval(self, request: dict, body: dict) -> dict:
        if request["status"] == "completed":
            raise SandboxError(400, "already applied")
        if request["reviewStatus"] != "approved":
            raise SandboxError(400, f"approval request is not approved (reviewStatus={request['reviewStatus']})")
        try:
            self.apply_instructions(request["instructions"], comment=body.get("comment") or request["description"],
                                    request=request)
        except SandboxError:
            request["status"] = "failed"
            raise
        now = time.time()
        request["status"] = "completed"
        request["appliedDate"] = epoch_ms(now)
        request["appliedByMemberId"] = ROLLOUT_MEMBER
        request["_version"] += 1
        return request

    def delete_approval(self, request: dict) -> None:
        """DELETE by the requester: a request not yet applied disappears from the API (kept in the state)."""
        if request["status"] == "completed":
            raise SandboxError(400, "an applied approval request cannot be deleted")
        request["deleted"] = True
        request["deletedDate"] = epoch_ms(time.time())

    def environment_json(self) -> dict:
        """GET /api/v2/projects/{p}/environments/{e}: the Environment with its approvalSettings."""
        path = f"/api/v2/projects/{seed.PROJECT}/environments/{seed.ENVIRONMENT}"
        return {
            "_links": {"self": {"href": path, "type": "application/json"},
                       "project": {"href": f"/api/v2/projects/{seed.PROJECT}", "type": "application/json"}},
            "_id": seed.stable_id("environment", seed.ENVIRONMENT).replace("-", "")[:24],
            "key": seed.ENVIRONMENT,
            "name": "Production",
            "apiKey": "sdk-" + seed.stable_id("sdk", seed.ENVIRONMENT),
            "mobileKey": "mob-" + seed.stable_id("mob", seed.ENVIRONMENT),
            "color": "417505",
            "defaultTtl": 0,
            "secureMode": False,
            "defaultTrackEvents": False,
            "requireComments": False,
            "confirmChanges": False,
            "tags": ["armada"],
            "critical": True,
            "approvalSettings": copy.deepcopy(self.approval_settings),
        }

    # ------------------------------------------------------------------ jenkins

    def _new_build(self, job: str, number: int, display: str | None, ts: float, duration_s: float,
                   causes: list, params: dict | None = None) -> dict:
        build = {
            "job": job, "number": number, "display": display or f"#{number}", "result": "SUCCESS",
            "building": False, "timestamp": ts, "duration": duration_s, "finish_at": None, "causes": causes,
            "params": params or {}, "console": "", "artifacts": {}, "queue_id": None,
        }
        self.jobs[job]["builds"][number] = build
        self.jobs[job]["next"] = max(self.jobs[job]["next"], number + 1)
        return build

    def _seed_jenkins(self, now: float) -> None:
        self.jobs = {
            name: {"fullName": name, "builds": {}, "next": 1}
            for name in (seed.IMAGE_JOB, seed.SMITH_JOB, seed.REPORT_JOB)
        }
        self.queue: dict[int, dict] = {}
        self._next_queue_id = 9101
        timer = [{"_class": "hudson.triggers.TimerTrigger$TimerTriggerCause", "shortDescription": "Started by timer"}]
        for number, build_name, image_map, upstream, age in (
            (seed.PREVIOUS_NUMBER, seed.PREVIOUS_BUILD, seed.PREVIOUS_MAP, seed.PREVIOUS_UPSTREAM, 86400 * 75),
            (seed.NEW_NUMBER, seed.NEW_BUILD, seed.NEW_MAP, seed.NEW_UPSTREAM, 3600 * 3),
        ):
            smith = self._new_build(seed.SMITH_JOB, upstream, None, now - age - 1500, 1380, timer)
            smith["console"] = seed.smith_console(upstream, number)
            causes = [self._upstream_cause(upstream)]
            build = self._new_build(seed.IMAGE_JOB, number, build_name, now - age, 2832.4, causes,
                                    {"BUILD_NAME": build_name})
            build["image_map"] = dict(image_map)
            self._complete_image_build(build, "success")
        self._report_number = seed.REPORT_FIRST_NUMBER
        self.fleet = {
            carrier: seed.seed_fleet(carrier, info["image_key"])
            for carrier, info in self.carriers_info().items()
            if info["image_key"] in seed.PROD_KEYS
        }
        self.publish_report(now - 60, converge=False)
        self._next_report = now + self.timing["report_interval_seconds"]

    @staticmethod
    def _upstream_cause(upstream: int) -> dict:
        return {
            "_class": "hudson.model.Cause$UpstreamCause",
            "shortDescription": f'Started by upstream project "{seed.SMITH_JOB}" build number {upstream}',
            "upstreamBuild": upstream,
            "upstreamProject": seed.SMITH_JOB,
            "upstreamUrl": "job/Conductors/job/Conductors-Infrastructure/job/SmithPackageSync-V2/",
        }

    def _complete_image_build(self, build: dict, outcome: str) -> None:
        upstream = next((c["upstreamBuild"] for c in build["causes"] if "upstreamBuild" in c), None)
        if any(c["_class"].endswith("UserIdCause") for c in build["causes"]):
            upstream = None
        build["console"] = seed.packer_console(build["display"], build["number"], build["image_map"],
                                               upstream=upstream, outcome=outcome)
        build["building"] = False
        build["finish_at"] = None
        if outcome == "success":
            build["result"] = "SUCCESS"
            build["artifacts"] = {"image_ids.json": _json_text(build["image_map"])}
            if build["display"] == seed.NEW_BUILD:
                # Reset `jenkins.new_build`: the new build's artifact and console as given (raw text).
                overrides = getattr(self, "new_build_overrides", {})
                if "image_ids_json" in overrides:
                    build["artifacts"]["image_ids.json"] = overrides["image_ids_json"]
                if "console" in overrides:
                    build["console"] = overrides["console"]
        else:
            build["result"] = "FAILURE"
            build["artifacts"] = {}
            if outcome == "timeout":
                build["duration"] = 7200.9

    def _apply_build_fault(self) -> None:
        build = self.jobs[seed.IMAGE_JOB]["builds"][seed.NEW_NUMBER]
        outcome = "failed" if self.has_fault("jenkins_build_failed") else "timeout"
        self._complete_image_build(build, outcome)

    def _finish_build(self, build: dict, now: float) -> None:
        build["duration"] = max(0.0, now - build["timestamp"])
        outcome = "failed" if self.has_fault("jenkins_build_failed") else "success"
        self._complete_image_build(build, outcome)

    def trigger_build(self, job: str, params: dict) -> int:
        """Queue a build (answered with a queue item at once); returns the queue id.

        The item gets its executable (the build starts) after `queue_seconds`, as Jenkins' quiet period
        and executor wait do; `advance` starts it.
        """
        now = time.time()
        queue_id = self._next_queue_id
        self._next_queue_id += 1
        self.queue[queue_id] = {"id": queue_id, "job": job, "number": None, "since": now, "params": dict(params),
                                "start_at": now + self.timing["queue_seconds"]}
        if self.timing["queue_seconds"] <= 0:
            self._start_queued(self.queue[queue_id], now)
        return queue_id

    def _start_queued(self, item: dict, now: float) -> None:
        job, params = item["job"], item["params"]
        number = self.jobs[job]["next"]
        user = {"_class": "hudson.model.Cause$UserIdCause", "shortDescription": "Started by user sandbox",
                "userId": "sandbox", "userName": "sandbox"}
        if job == seed.IMAGE_JOB:
            builds = self.jobs[job]["builds"]
            latest = builds[max(builds)]
            name = params.get("BUILD_NAME") or latest["display"]
            # Keep the upstream cause first: a rebuild still belongs to the same SmithPackageSync-V2 run.
            causes = [c for c in latest["causes"] if "upstreamBuild" in c] + [user]
            build = self._new_build(job, number, name, now, 0.0, causes, {**latest["params"], **params,
                                                                         "BUILD_NAME": name})
            build["image_map"] = self._map_for_build(name)
            build["result"] = None
            build["building"] = True
            build["finish_at"] = now + self.timing["rebuild_seconds"]
            build["console"] = f"Started by user sandbox\nRunning as SYSTEM\n+ export BUILD_NAME={name}\n"
            if self.timing["rebuild_seconds"] <= 0:
                self._finish_build(build, now)
        elif job == seed.REPORT_JOB:
            build = self.publish_report(now, causes=[user])
        else:
            build = self._new_build(job, number, None, now, 0.0, [user], params)
            build["console"] = seed.smith_console(number, None)
        build["queue_id"] = item["id"]
        item["number"] = build["number"]

    def _map_for_build(self, name: str) -> dict:
        for build in self.jobs[seed.IMAGE_JOB]["builds"].values():
            if build["display"] == name and build.get("image_map"):
                return dict(build["image_map"])
        # An unknown build name gets stable made-up image ids in the same ranges as the real ones.
        digest = int(hashlib.sha1(name.encode()).hexdigest(), 16)
        base = 9000000 + digest % 900000
        return {"dev": str(base), "prod": str(base + 53), "prodfr2": str(base + 59), "stage": str(base + 21)}

    def find_build(self, job: str, ref: str) -> dict | None:
        builds = self.jobs[job]["builds"]
        if ref.isdigit():
            return builds.get(int(ref))
        ordered = sorted(builds.values(), key=lambda b: -b["number"])
        done = [b for b in ordered if not b["building"]]
        picks = {
            "lastBuild": ordered,
            "lastCompletedBuild": done,
            "lastSuccessfulBuild": [b for b in done if b["result"] == "SUCCESS"],
            "lastStableBuild": [b for b in done if b["result"] == "SUCCESS"],
            "lastFailedBuild": [b for b in done if b["result"] == "FAILURE"],
            "lastUnsuccessfulBuild": [b for b in done if b["result"] != "SUCCESS"],
        }.get(ref)
        return picks[0] if picks else None

    # ------------------------------------------------------------------ reports

    def publish_report(self, now: float, *, converge: bool = True, causes: list | None = None) -> dict:
        """New reportCarrierWorkerIaasImageCounts build from the fleet: each carrier first moves
        up to a quarter of its fleet onto what its rule serves now, then is counted."""
        if converge:
            for carrier, counts in self.fleet.items():
                info = self.carriers[carrier]
                served = self.served_map(info["region"])[info["image_key"]]
                move = min(seed.FLEET_STEP, seed.FLEET_SIZE - counts.get(served, 0))
                for image in sorted(i for i in counts if i != served):
                    take = min(move, counts[image])
                    counts[image] -= take
                    counts[served] = counts.get(served, 0) + take
                    move -= take
                    if not counts[image]:
                        del counts[image]
        number = self._report_number
        self._report_number += 1
        timer = [{"_class": "hudson.triggers.TimerTrigger$TimerTriggerCause", "shortDescription": "Started by timer"}]
        build = self._new_build(seed.REPORT_JOB, number, None, now, 94.2, causes or timer)
        build["console"] = seed.report_console(number)
        build["counts"] = {c: dict(v) for c, v in self.fleet.items()}
        total: Counter[str] = Counter()
        per_carrier = []
        for carrier, counts in self.fleet.items():
            total.update(counts)
            per_carrier.append(f"# CARRIER: {carrier}")
            per_carrier += [f"{counts[i]:7d} imageid:{i}" for i in sorted(counts) if counts[i]]
        account = [
            "# -----------------------------",
            "# Image counts for this account",
            "# -----------------------------",
        ] + [f"{total[i]:7d} {i}" for i in sorted(total) if total[i]]
        build["artifacts"] = {
            seed.REPORT_FILES[0]: "\n".join(account) + "\n",
            seed.REPORT_FILES[1]: "\n".join(per_carrier) + "\n",
        }
        builds = self.jobs[seed.REPORT_JOB]["builds"]
        while len(builds) > REPORT_BUILDS_KEEP:
            del builds[min(builds)]
        return build

    # ------------------------------------------------------------------ github

    def _seed_github(self, now: float) -> None:
        self.repo_files: dict[str, bytes] = {}
        self.repo_commits: list[dict] = []
        readme = b"# Conductors team\n\nTeam notes, train evidence and runbook material.\n"
        self.commit_file("README.md", readme, "Initial commit", None, now - 86400 * 400, seeded=True)
        previous = self.jobs[seed.IMAGE_JOB]["builds"][seed.PREVIOUS_NUMBER]
        text = seed.evidence_markdown(seed.PREVIOUS_BUILD, seed.PREVIOUS_NUMBER, seed.PREVIOUS_MAP,
                                      previous["console"])
        self.commit_file(seed.evidence_path(seed.PREVIOUS_BUILD), text.encode(),
                         f"Add evidence for immutable image build {seed.PREVIOUS_BUILD}", None,
                         now - 86400 * 74, seeded=True)

    def commit_file(self, path: str, data: bytes, message: str, committer: dict | None, now: float,
                    seeded: bool = False) -> dict:
        parent = self.repo_commits[-1]["sha"] if self.repo_commits else None
        created = path not in self.repo_files
        self.repo_files[path] = data
        sha = hashlib.sha1(f"{parent}/{path}/{blob_sha(data)}/{message}/{now}/{len(self.repo_commits)}".encode())
        commit = {
            "sha": sha.hexdigest(),
            "parent": parent,
            "path": path,
            "message": message,
            "content": data.decode("utf-8", "replace"),
            "blob_sha": blob_sha(data),
            "committer": committer or {"name": "Conductors Automation", "email": "conductors@example.com"},
            "time": now,
            "tree": dict(self.repo_files),
            "seeded": seeded,
            "created": created,
        }
        self.repo_commits.append(commit)
        return commit

    def _commits_at(self, ref: str | None) -> list[dict]:
        """The history up to `ref` (branch master or a commit sha, 7+ hex digits), oldest first."""
        if not ref or ref in ("master", "HEAD", "refs/heads/master"):
            return self.repo_commits
        index = next((i for i, c in enumerate(self.repo_commits) if len(ref) >= 7 and c["sha"].startswith(ref)), None)
        if index is None:
            raise SandboxError(404, f"No commit found for the ref {ref}")
        return self.repo_commits[: index + 1]

    def tree_at(self, ref: str | None) -> dict[str, bytes]:
        commits = self._commits_at(ref)
        return commits[-1]["tree"] if commits else {}

    def file_at(self, path: str, ref: str | None) -> tuple[bytes | None, dict | None]:
        """(content, last commit touching it) at `ref`; (None, None) when the file does not exist there."""
        commits = self._commits_at(ref)
        if not commits or path not in commits[-1]["tree"]:
            return None, None
        last = next(c for c in reversed(commits) if c["path"] == path)
        return commits[-1]["tree"][path], last

    # ------------------------------------------------------------------ chlorine

    def carriers_info(self) -> dict[str, dict]:
        return {
            carrier: {"name": carrier, "region": target, "image_key": key}
            for target, carriers, key in seed.TARGETS
            for carrier in carriers
        }

    def _seed_chlorine(self, now: float) -> None:
        self.targets = {t["target"]: t for t in seed.target_table()}
        self.carriers = {
            name: {**info, "workers": seed.carrier_workers(name)} for name, info in self.carriers_info().items()
        }
        self.requested_reloads: list[dict] = []
        self.autorecovery: dict[str, deque] = {c: deque(maxlen=AUTORECOVERY_KEEP) for c in self.carriers}
        self._pending: list[dict] = []
        self._reload_seq = 0
        self._change_seq = 5530645
        self._worker_last: dict[str, float] = {}
        interval = self.timing["autorecovery_interval_seconds"]
        self._last_autorecovery = dict.fromkeys(self.carriers, now)
        self._next_autorecovery = {c: now + interval * self.rng.uniform(0.2, 1.0) for c in self.carriers}
        self._autorecovery_since_change = dict.fromkeys(seed.TARGET_NAMES, 0)
        self._alerted: set[str] = set()

    def next_change_id(self) -> str:
        self._change_seq += self.rng.randint(1, 7)
        return f"CHG{self._change_seq:07d}"

    def request_reload(self, carrier: str, worker: str | None, reason: str, change_id: str | None) -> dict:
        if carrier not in self.carriers:
            raise SandboxError(404, f"unknown carrier {carrier!r}")
        workers = self.carriers[carrier]["workers"]
        busy = {r["worker"] for r in self._pending}
        if worker:
            if worker not in workers:
                raise SandboxError(400, f"worker {worker!r} is not in carrier {carrier}")
            if worker in busy:
                raise SandboxError(409, f"worker {worker} is already being reloaded")
        else:
            free = [w for w in workers if w not in busy]
            if not free:
                raise SandboxError(409, f"no healthy worker available in {carrier}")
            worker = min(free, key=lambda w: (self._worker_last.get(w, 0.0), workers.index(w)))
        return self._start_reload(carrier, worker, "requested", reason, change_id or self.next_change_id(),
                                  time.time())

    def _start_reload(self, carrier: str, worker: str, kind: str, reason: str, change_id: str,
                      now: float, planned_fail: bool = False) -> dict:
        info = self.carriers[carrier]
        self._reload_seq += 1
        reload = {
            "id": f"rl-{self._reload_seq:06d}",
            "carrier": carrier,
            "region": info["region"],
            "worker": worker,
            "change_id": change_id,
            "kind": kind,
            "reason": reason,
            "status": "pending",
            "image_id": self.served_map(info["region"])[info["image_key"]],
            "requested_at": now,
            "finished_at": None,
            "finish_at": now + self.timing["reload_seconds"],
            "error": None,
            "planned_fail": planned_fail,
        }
        self._worker_last[worker] = now
        if kind == "requested":
            self.requested_reloads.append(reload)
        else:
            self.autorecovery[carrier].append(reload)
        self._pending.append(reload)
        if self.timing["reload_seconds"] <= 0:
            self._finish_reload(reload, now)
        return reload

    def _finish_reload(self, reload: dict, now: float) -> None:
        self._pending.remove(reload)
        reload["finished_at"] = now
        if self.has_fault(f"reload_fail:{reload['carrier']}"):
            reload["status"] = "failed"
            reload["error"] = "reload failed: worker did not come back Ready after bootstrap (timeout 45m)"
        elif reload["planned_fail"]:
            reload["status"] = "failed"
            reload["error"] = "autorecovery reload failed: bootstrap exited 1 (kubelet not Ready)"
            self._raise_incident(reload, now)
        else:
            reload["status"] = "succeeded"

    def _autorecovery_due(self, now: float) -> None:
        interval = self.timing["autorecovery_interval_seconds"]
        if interval <= 0:
            return
        for carrier, info in self.carriers.items():
            if now < self._next_autorecovery[carrier]:
                continue
            region = info["region"]
            step = interval * (SLOW_FACTOR if self.has_fault(f"autorecovery_slow:{region}") else 1)
            self._last_autorecovery[carrier] = now
            nxt = self._next_autorecovery[carrier] + step
            self._next_autorecovery[carrier] = nxt if nxt > now else now + step
            busy = {r["worker"] for r in self._pending}
            free = [w for w in info["workers"] if w not in busy]
            if not free:
                continue
            planned_fail = False
            if self.served_map(region) != seed.PREVIOUS_MAP:
                self._autorecovery_since_change[region] += 1
                if (self._autorecovery_since_change[region] > 2 and region not in self._alerted
                        and self.has_fault(f"autorecovery_failed_alert:{region}")):
                    planned_fail = True
                    self._alerted.add(region)
            self._start_reload(carrier, self.rng.choice(free), "autorecovery", "carrier autorecovery",
                               self.next_change_id(), now, planned_fail)

    def all_reloads(self) -> list[dict]:
        merged = list(self.requested_reloads)
        for queue in self.autorecovery.values():
            merged.extend(queue)
        merged.sort(key=lambda r: (r["requested_at"], r["id"]))
        return merged

    # ------------------------------------------------------------------ pagerduty

    def _raise_incident(self, reload: dict, now: float) -> None:
        self._incident_number += 1
        incident_id = "Q" + hashlib.sha1(f"{reload['id']}/{now}".encode()).hexdigest()[:12].upper()
        self.incidents.append(
            {
                "id": incident_id,
                "incident_number": self._incident_number,
                "title": f"autorecovery_failed: {reload['carrier']} {reload['worker']} in {reload['region']}",
                "description": f"autorecovery_failed: {reload['carrier']} {reload['worker']} in {reload['region']}",
                "status": "triggered",
                "urgency": "low",
                "incident_key": f"autorecovery_failed/{reload['carrier']}/{reload['worker']}",
                "created_at": now,
                "region": reload["region"],
                "carrier": reload["carrier"],
                "worker": reload["worker"],
            }
        )


def _json_text(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"
