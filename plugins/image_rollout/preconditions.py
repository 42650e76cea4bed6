"""What must be true, read from the systems of record, before the rollout writes anything.

Pure decisions, no I/O: the operators read LaunchDarkly, GitHub and Airflow's own records, then
ask these functions whether a write may go ahead. A function here returns the reason a
precondition fails (a ``Hold``) or None; it never promotes, and it never trusts a task state.

Issue 9 items 1, 3, 4, 5 and 7; issue 10 item 3 (approval settings).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from image_rollout.contracts import IMAGE_KEYS, parse_time_or_none
from image_rollout.inputs import is_build_name, is_image_id

OVERRIDE_VARIABLE = "image_rollout_override"
HOLD_VARIABLE = "image_rollout_hold"
WAITS = ("bake", "soak")
KEY_PREFIX = "immutable-image"

# The only change-request service the rollout drives (LaunchDarkly's own approvals).
SUPPORTED_SERVICE_KINDS = ("launchdarkly", "", None)


class UnsupportedApprovalSettings(ValueError):
    """LaunchDarkly approval settings the rollout cannot work with: a clear error before any write."""


@dataclass(frozen=True)
class Hold:
    """A precondition that does not hold (yet): the write waits, and this says why."""

    precondition: str
    reason: str
    wait: str | None = None  # "bake" / "soak": a wait the override Variable may go past

    def __str__(self) -> str:
        return f"{self.precondition}: {self.reason}"


# -- keys (item 7) --------------------------------------------------------------------------------

def rollout_key(build_name: str, what: str) -> str:
    """``immutable-image/<build>/<target or step>``: the marker of the rollout's own requests and commits."""
    return f"{KEY_PREFIX}/{build_name}/{what}"


#: What starts the line that marks a change request's description or an evidence commit's message.
KEY_LINE_PREFIX = "Rollout-Key:"


def key_line(key: str) -> str:
    """The line (a commit trailer, or a line of a change request's description) that carries ``key``."""
    return f"{KEY_LINE_PREFIX} {key}"


def carries_key(text: Any, key: str) -> bool:
    """Whether a description or commit message carries exactly this key on a line of its own."""
    if not isinstance(text, str):
        return False
    return any(line.strip() == key_line(key) for line in text.splitlines())


# -- the map written is the verified build's ----------------------------------------------------

def check_image_map(image_map: Mapping[str, Any] | None, verified: Mapping[str, Any] | None) -> Hold | None:
    """The map about to be written is exactly the verified build's, and every id is 1-12 ASCII digits."""
    if not isinstance(verified, Mapping) or set(verified) != set(IMAGE_KEYS):
        return Hold("verified build", f"no verified image map with keys {list(IMAGE_KEYS)}: {verified!r}")
    bad = {k: v for k, v in verified.items() if not isinstance(v, str) or not is_image_id(v)}
    if bad:
        return Hold("verified build", f"image ids are not 1-12 ASCII digits: {bad!r}")
    if image_map is None or dict(image_map) != dict(verified):
        return Hold("verified build", f"the map to write {image_map!r} is not the verified build's {dict(verified)!r}")
    return None


# -- override -------------------------------------------------------------------------------------

def parse_override(raw: Any, build_name: str) -> dict | None:
    """The override Variable's value if it names this build, with a reason and a user; else None.

    ``{"build_name": "...", "waits": ["bake"|"soak"], "reason": "...", "by": "<airflow user>"}``.
    Anything malformed is no override at all (it never widens what is allowed).
    """
    if raw in (None, ""):
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    if not isinstance(raw, Mapping) or raw.get("build_name") != build_name:
        return None
    waits = raw.get("waits")
    reason, by = raw.get("reason"), raw.get("by")
    if not isinstance(waits, list) or not waits or any(w not in WAITS for w in waits):
        return None
    if not isinstance(reason, str) or not reason.strip() or not isinstance(by, str) or not by.strip():
        return None
    return {"build_name": build_name, "waits": list(waits), "reason": reason.strip(), "by": by.strip()}


def overridden(hold: Hold, override: dict | None) -> bool:
    """Only a wait (bake or soak) can be overridden; never approval, drift, freeze or ownership."""
    return bool(override and hold.wait and hold.wait in override["waits"])


# -- separation of duties (item 3) ------------------------------------------------------------------

def _user_ids(user: Any) -> set[str]:
    if isinstance(user, Mapping):
        return {str(v) for v in (user.get("id"), user.get("name")) if v}
    return {str(user)} if user else set()


def check_start_decision(decision: Mapping | None, *, approvers: Iterable[str],
                         triggering_user: str | None) -> Hold | None:
    """A recorded "Approve" from an assigned approver who is not the identity that triggered the run."""
    if not decision or not isinstance(decision, Mapping):
        return Hold("start decision", "no start decision recorded for this run")
    if list(decision.get("chosen_options") or []) != ["Approve"]:
        return Hold("start decision", f"the decision was {decision.get('chosen_options')!r}, not Approve")
    who = _user_ids(decision.get("responded_by_user"))
    if not who:
        return Hold("start decision", "the decision does not say who took it")
    allowed = {str(a) for a in approvers}
    if not who & allowed:
        return Hold("start decision", f"{sorted(who)} is not an assigned approver ({sorted(allowed)})")
    if triggering_user and triggering_user in who:
        return Hold("start decision",
                    f"{triggering_user} triggered this run and may not approve its prod start")
    if not decision.get("responded_at"):
        return Hold("start decision", "the decision has no time")
    return None


# -- canary and remaining prod (item 1) ---------------------------------------------------------------

def check_bake(*, stage_serves_build: bool, stage_applied: datetime | None, bake_seconds: float,
               now: datetime) -> Hold | None:
    """stage-south serves the build now, and LaunchDarkly's appliedDate of its request plus the bake is past."""
    if not stage_serves_build:
        return Hold("bake", "stage-south does not serve this build now")
    if stage_applied is None:
        return Hold("bake", "LaunchDarkly has no applied stage-south request for this build")
    ends = stage_applied + timedelta(seconds=bake_seconds)
    if now < ends:
        return Hold("bake", f"the bake after stage-south ends at {ends.isoformat()} "
                            f"({int((ends - now).total_seconds())}s left)", wait="bake")
    return None


def latest_promotion(applied: Iterable[datetime | None], rollbacks: Iterable[datetime | None]) -> datetime | None:
    """The canary region's latest promotion: its newest applied request, or a rollback after it."""
    times = [t for t in (*applied, *rollbacks) if t is not None]
    return max(times) if times else None


def check_soak(*, canary_serves_build: bool, soak: Mapping | None, latest: datetime | None,
               build_name: str | None = None) -> Hold | None:
    """ap-south serves the build now, and the soak passed over data since ap-south's latest promotion.

    ``soak`` is the soak gate's XCom: ``{"verdict": "pass", "since", "build", ...}``, where ``since``
    is the promotion time the verdict counted from.
    """
    if not canary_serves_build:
        return Hold("soak", "ap-south does not serve this build now (rolled back or changed)")
    if not soak or soak.get("verdict") != "pass":
        return Hold("soak", "no passed soak verdict for this build", wait="soak")
    if build_name and soak.get("build") not in (None, build_name):
        return Hold("soak", f"the soak verdict is for build {soak.get('build')}, not {build_name}", wait="soak")
    since = parse_time_or_none(soak.get("since") or soak.get("started_at"))
    if since is None:
        return Hold("soak", "the soak verdict does not say since when it measured", wait="soak")
    if latest is None:
        return Hold("soak", "LaunchDarkly shows no applied ap-south promotion for this build")
    if since < latest:
        return Hold("soak", f"the soak measured from {since.isoformat()}, before ap-south's latest "
                            f"promotion at {latest.isoformat()}: its data does not count", wait="soak")
    return None


# -- drift (item 4) ----------------------------------------------------------------------------------

RuleState = Literal["write", "done", "drift"]


def classify_rule(current: Mapping | None, *, baseline: Mapping | None, build_map: Mapping,
                  ours_applied: bool, needs_request: bool) -> RuleState:
    """What to do with a rule before writing it.

    ``write``: it still serves the verification baseline. ``done``: it serves the build's map
    because of our own earlier write (our keyed request applied; for a direct write, the same
    map is all there is to see). ``drift``: anything else: someone else changed it.
    """
    cur = dict(current) if current is not None else None
    if cur == dict(build_map):
        return "done" if (ours_applied or not needs_request) else "drift"
    if baseline is not None and cur == dict(baseline):
        return "write"
    return "drift"


# -- rollback (items 4 and 5) ------------------------------------------------------------------------

def rollback_decisions(targets: Iterable[str], *, current: Mapping[str, Any], build_map: Mapping,
                       previous: Mapping[str, Any], newer_build: str | None) -> list[dict]:
    """For each target the failed gate does not vouch for: restore it, or leave it alone, and why.

    A target serving THIS build's map is restored, superseded or not: a newer build that took
    over the flag does not own a rule that still serves ours. Anything else is left alone.
    """
    out = []
    for target in targets:
        now = current.get(target)
        before = previous.get(target)
        if now is not None and dict(now) == dict(build_map):
            if not before:
                out.append({"target": target, "action": "left", "why": "no recorded previous image map"})
            elif dict(before) == dict(build_map):
                out.append({"target": target, "action": "left",
                            "why": "it served this build before the rollout: nothing to restore"})
            else:
                out.append({"target": target, "action": "restore", "to": dict(before),
                            "why": "it served the failing build"
                                   + (f" and newer build {newer_build} does not own it yet" if newer_build else "")})
        elif before is not None and now is not None and dict(now) == dict(before):
            out.append({"target": target, "action": "left", "why": "it already serves its previous image map"})
        else:
            out.append({"target": target, "action": "left",
                        "why": (f"it serves another map now (newer build {newer_build} or a person): not ours to change"
                                if now is not None else "it serves a percentage rollout: not ours to change")})
    return out


# -- approval settings (issue 10 item 3) -------------------------------------------------------------

def check_approval_settings(settings: Mapping | None, *, board_approvals: int = 1) -> None:
    """Refuse LaunchDarkly approval settings the rollout cannot work with, before any write.

    Supported: approvals not required; or required with LaunchDarkly's own approval service,
    no required approval tags, at most ``board_approvals`` approvals (what the change board
    gives a train), and not auto-applied by LaunchDarkly (the rollout applies after its own checks).
    """
    if settings is None:
        return
    if not isinstance(settings, Mapping):
        raise UnsupportedApprovalSettings(f"approvalSettings is not an object: {settings!r}")
    if not settings.get("required"):
        return
    problems = []
    kind = settings.get("serviceKind")
    if kind not in SUPPORTED_SERVICE_KINDS:
        problems.append(f"serviceKind {kind!r} (only LaunchDarkly's own approvals are supported)")
    tags = settings.get("requiredApprovalTags") or []
    if tags:
        problems.append(f"requiredApprovalTags {list(tags)!r} (the rollout's flag changes carry no such tags)")
    need = settings.get("minNumApprovals", 1)
    if not isinstance(need, int) or isinstance(need, bool) or need < 1 or need > board_approvals:
        problems.append(f"minNumApprovals {need!r} (the change board gives {board_approvals})")
    if settings.get("autoApplyApprovedChanges"):
        problems.append("autoApplyApprovedChanges true (the rollout must re-check its preconditions before applying)")
    if problems:
        raise UnsupportedApprovalSettings(
            "LaunchDarkly approval settings the rollout cannot work with: " + "; ".join(problems)
            + ". Change them in the environment, or roll out by hand; nothing was written."
        )


def train_withdrawn(request_id: str, target: str, file_task_id: str) -> str:
    """Why a filed change request that LaunchDarkly no longer has (404) cannot be started or applied, and the
    way back: no retry brings it back, a new train must go to the change board."""
    return (f"change request {request_id} for {target} no longer exists in LaunchDarkly (withdrawn when the "
            f"prod start was rejected, or deleted): there is no train to start; clear {file_task_id} to file a "
            "new one for the change board")


def requests_required(settings: Mapping | None) -> bool:
    return bool(isinstance(settings, Mapping) and settings.get("required"))


# -- run colour (item 8) ------------------------------------------------------------------------------

def promotions_started(states: Mapping[str, str], promotion_task_prefixes: Iterable[str]) -> bool:
    """Whether any promotion task ran to success (a stop before that rolls nothing back)."""
    prefixes = tuple(promotion_task_prefixes)
    return any(state == "success" for task, state in states.items() if task.split("[")[0].startswith(prefixes))


# -- a hold for one rollout (issue 11 item 3) ---------------------------------------------------------

HOLD_FIELDS = ("by", "reason", "since")
HOLD_EXAMPLE = '{"<build name>": {"by": "<airflow user>", "reason": "<why>"}}'


def parse_holds(raw: Any) -> dict:
    """The hold Variable's value: ``{"builds": {name: {"by", "reason", "since", "problem"}}, "problems",
    "hold_all"}``.

    ``{"532-1250-879-20210818": {"by": "jdoe", "reason": "INC0012345: dal10 alerts"}}`` holds that
    build; ``{}``, empty or no Variable holds nothing. A malformed value never releases anything: a
    value that cannot be read, or a key that is not a build name, holds EVERY build (it may have meant
    any of them); an entry without ``by`` or ``reason``, or with an unknown field, still holds its build.
    Each problem is named in ``problems``.
    """
    out: dict = {"builds": {}, "problems": [], "hold_all": False}
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return out
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError as exc:
            out["problems"].append(f"{HOLD_VARIABLE} is not JSON ({exc}); expected {HOLD_EXAMPLE}")
            out["hold_all"] = True
            return out
    if not isinstance(value, Mapping):
        out["problems"].append(f"{HOLD_VARIABLE} must be a JSON object {HOLD_EXAMPLE}, not {type(value).__name__}")
        out["hold_all"] = True
        return out
    for key, entry in value.items():
        if not is_build_name(key):
            out["problems"].append(f"{HOLD_VARIABLE} key {str(key)[:80]!r} is not a build name NNN-NNNN-NNN-YYYYMMDD")
            out["hold_all"] = True
            continue
        problems = []
        if not isinstance(entry, Mapping):
            problems.append(f"its value must be an object {{\"by\": ..., \"reason\": ...}}, not {type(entry).__name__}")
            entry = {}
        by, reason = entry.get("by"), entry.get("reason")
        missing = [f for f, v in (("by", by), ("reason", reason)) if not isinstance(v, str) or not v.strip()]
        if missing:
            problems.append(f"missing {' and '.join(missing)}")
        unknown = sorted(str(k) for k in entry if k not in HOLD_FIELDS)
        if unknown:
            problems.append(f"unknown field(s) {unknown} (known: {list(HOLD_FIELDS)}; remove the entry to resume)")
        since = entry.get("since")
        out["builds"][key] = {
            "by": by.strip() if isinstance(by, str) and by.strip() else None,
            "reason": reason.strip() if isinstance(reason, str) and reason.strip() else None,
            "since": since if isinstance(since, str) else None,
            "problem": "; ".join(problems) or None,
        }
        if problems:
            out["problems"].append(f"{HOLD_VARIABLE} entry for {key}: {'; '.join(problems)}")
    return out


def check_hold(parsed: Mapping, build_name: str) -> Hold | None:
    """Whether the hold Variable (``parse_holds``) holds this build's writes, and why."""
    entry = parsed["builds"].get(build_name)
    if entry is not None:
        why = f"held by {entry['by'] or 'unknown'}: {entry['reason'] or 'no reason given'}"
        if entry["problem"]:
            why += f" (the entry is malformed: {entry['problem']})"
        return Hold("hold", f"{why}. Resume: remove {build_name} from the Variable {HOLD_VARIABLE}")
    if parsed["hold_all"]:
        return Hold("hold", f"the Variable {HOLD_VARIABLE} is malformed ({'; '.join(parsed['problems'])}): "
                            "every build is held until it is fixed or deleted")
    return None


# -- one rollout per build (issue 11 item 1) ------------------------------------------------------------

#: Airflow run states in which a run may still write.
ACTIVE_RUN_STATES = ("queued", "running")
RECORD_FIELDS = ("build_name", "run_id", "claimed_at", "finished_at")


class MalformedRolloutRecord(ValueError):
    """The build's rollout record in GitHub cannot be read: nothing is decided on it."""


def parse_rollout_record(text: str | None, build_name: str) -> dict | None:
    """The build's rollout record (JSON: which run claimed the build, and when it finished), or None."""
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise MalformedRolloutRecord(f"the rollout record of {build_name} is not JSON ({exc})") from None
    if not isinstance(record, Mapping):
        raise MalformedRolloutRecord(f"the rollout record of {build_name} is not a JSON object")
    if record.get("build_name") != build_name:
        raise MalformedRolloutRecord(
            f"the rollout record of {build_name} names build {record.get('build_name')!r}")
    if not isinstance(record.get("run_id"), str) or not record["run_id"]:
        raise MalformedRolloutRecord(f"the rollout record of {build_name} names no run_id")
    if record.get("finished_at") is not None and parse_time_or_none(record["finished_at"]) is None:
        raise MalformedRolloutRecord(f"the rollout record of {build_name} has finished_at "
                                     f"{record['finished_at']!r}, not a time")
    return {k: record.get(k) for k in RECORD_FIELDS}


Claim = Literal["claim", "ours", "refuse", "finished"]


def claim_decision(record: Mapping | None, *, run_id: str, claimant_state: str | None) -> tuple[Claim, str]:
    """Whether this run may roll the build out, from the build's record and Airflow's state of its claimant.

    ``finished``: a run already finished the rollout (a rerun is a no-op). ``ours``: this run holds the
    claim (a retried verification). ``refuse``: another run holds it and Airflow says it is still
    active. ``claim``: nobody does, or the claimant ended (failed, marked, deleted): this run takes over.
    """
    if record is None:
        return "claim", "no run has claimed this build yet"
    if record.get("finished_at"):
        return "finished", (f"run {record['run_id']} finished the rollout at {record['finished_at']}")
    if record["run_id"] == run_id:
        return "ours", "this run claimed the build"
    if claimant_state in ACTIVE_RUN_STATES:
        return "refuse", (f"run {record['run_id']} is rolling this build out ({claimant_state}, claimed "
                          f"{record.get('claimed_at')})")
    return "claim", (f"run {record['run_id']} claimed it at {record.get('claimed_at')} and is "
                     f"{claimant_state or 'gone from Airflow'}: this run takes over")
