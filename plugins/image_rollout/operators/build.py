"""Build verification: the runbook's "verify the Jenkins image build" step, and the dry-run plan."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import Variable
from airflow.sdk.exceptions import AirflowFailException

from image_rollout import lazy_module
from image_rollout.contracts import IMAGE_KEYS, iso, utcnow
from image_rollout.operators.base import (
    ACTIVE_BUILD_VARIABLE,
    RolloutOperator,
)
from image_rollout.slack_messages import escape_mrkdwn

ev = lazy_module("image_rollout.evidence_file")
verdicts = lazy_module("image_rollout.verdicts")
inputs = lazy_module("image_rollout.inputs")

TIMEOUT_MARKER = r"Build timed out \(after \d+ minutes\)"

if TYPE_CHECKING:
    from image_rollout.hooks.jenkins import JenkinsHook
    from image_rollout.payloads import NoopRerun, VerifiedBuild


KNOWN_CONF = {"build_name", "build_number", "image_ids", "dry_run"}


def validate_request(params: dict, conf: dict | None = None) -> dict:
    """Validate the run's params/conf before any side effect; raise naming the bad field.

    Unknown conf keys are refused: a mistyped ``"dryrun": true`` must not start a live rollout.
    An image id is 1-12 ASCII digits and nothing else (no sign, space, newline or non-ASCII
    digit); a build name is ASCII ``NNN-NNNN-NNN-YYYYMMDD``.
    """
    unknown = sorted(set(conf or {}) - KNOWN_CONF)
    if unknown:
        raise AirflowFailException(f"conf has unknown key(s) {unknown}; known: {sorted(KNOWN_CONF)}")
    build_name = params.get("build_name")
    if not inputs.is_build_name(build_name):
        raise AirflowFailException(
            f"conf build_name {build_name!r} is not an ASCII build name NNN-NNNN-NNN-YYYYMMDD"[:300]
        )
    number = params.get("build_number")
    if number not in (None, ""):
        if not inputs.is_build_number(number):
            raise AirflowFailException(f"conf build_number {number!r} is not a Jenkins build number"[:300])
    image_ids = params.get("image_ids") or {}
    if not isinstance(image_ids, dict):
        raise AirflowFailException("conf image_ids must be an object like {\"dev\": \"8495980\", ...}")
    for key, value in image_ids.items():
        if key not in IMAGE_KEYS:
            raise AirflowFailException(f"conf image_ids has unknown environment {key!r}"[:300])
        if not inputs.is_image_id(value):
            raise AirflowFailException(
                f"conf image_ids.{key} {value!r} is not an image id (1-12 ASCII digits, nothing else)"[:300]
            )
    dry_run = params.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise AirflowFailException(f"conf dry_run {dry_run!r} must be true or false"[:300])
    return {
        "build_name": build_name,
        "build_number": int(number) if number not in (None, "") else None,
        "image_ids": {k: str(v) for k, v in image_ids.items()},
        "dry_run": dry_run,
    }


class VerifyBuildOperator(RolloutOperator):
    """Find the immutable_image build, follow a rebuild after a timeout, and capture its image ids.

    Runbook: "If the scheduled job fails, review the failures and rebuild the job" and "we have
    seen timeouts being an issue here; sometimes a rebuild of the job will work". A timed-out
    build is rebuilt (at most ``jenkins.rebuilds_on_timeout`` times); any other failure stops the
    rollout. Waiting for a running build is deferred.
    """

    def execute(self, context, event: dict | None = None) -> VerifiedBuild | NoopRerun:
        request = validate_request(dict(context["params"]), dict(context["dag_run"].conf or {}))
        name = request["build_name"]
        noop = self._one_rollout_per_build(context, name, dry_run=request["dry_run"])
        if noop is not None:
            return noop
        jenkins = self.jenkins(context)
        job = self.plan.jenkins.image_job
        state = context["ti"].xcom_pull(task_ids=self.task_id, key="follow") or {}
        number = state.get("number") or request["build_number"]
        if number is None:
            found = jenkins.find_build_by_name(job, name)
            if found is None:
                raise AirflowFailException(f"Jenkins has no {job} build named {name}")
            number = found["number"]
        jenkins_build = jenkins.get_build(job, number)
        if jenkins_build.get("displayName") != name:
            raise AirflowFailException(
                f"Jenkins {job} #{number} is build {jenkins_build.get('displayName')!r}, not {name!r}"
            )
        if jenkins_build.get("building") or jenkins_build.get("result") is None:
            self.log.info("Jenkins %s #%s is still running; checking again later", job, number)
            context["ti"].xcom_push(key="follow", value={**state, "number": number})
            self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=self.plan.jenkins.poll)), method_name="execute")
        console = jenkins.get_console_text(job, number)
        if jenkins_build["result"] != "SUCCESS":
            rebuilds = int(state.get("rebuilds", 0))
            if re.search(TIMEOUT_MARKER, console) and rebuilds < self.plan.jenkins.rebuilds_on_timeout:
                new_number = self._rebuild_once(jenkins, job, name, number)
                self.say(f"Image build {name} #{number} timed out; rebuilding as #{new_number}")
                context["ti"].xcom_push(key="follow", value={"number": new_number, "rebuilds": rebuilds + 1})
                self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=self.plan.jenkins.poll)),
                           method_name="execute")
            raise AirflowFailException(
                f"Jenkins {job} #{number} ({name}) ended {jenkins_build['result']}; not rolling out. "
                f"Console: {jenkins.build_url(job, number)}console"
            )
        images = inputs.parse_image_ids(jenkins.get_artifact_text(job, number, "image_ids.json"))
        images = self._check_images(images, request["image_ids"])
        verified_at = iso(utcnow())
        flags = self.flags(context)
        # A LaunchDarkly approval setting the rollout cannot work with stops it here, before any write;
        # every write reads the settings again (operators/base.py).
        approval_settings = self.approval_settings(flags)
        result: VerifiedBuild = {
            "name": name,
            "number": number,
            "job": job,
            "url": jenkins.build_url(job, number),
            "console_url": f"{jenkins.build_url(job, number)}console",
            "console_text": ev.console_excerpt(console),
            "images": images,
            "dry_run": request["dry_run"],
            "verified_at": verified_at,
            "approval_settings": approval_settings,
            "baseline": flags.rule_values(),
        }
        if not request["dry_run"]:
            self.hold_if_held(context, name)
            noop = self._claim_build(context, name)
            if noop is not None:
                return noop
            self._claim_flag(name)
        self.say(
            f"Rollout of immutable image build {name} started (Jenkins #{number}, "
            f"images {escape_mrkdwn(json.dumps(images, sort_keys=True))})"
            + (" [dry run]" if request["dry_run"] else "")
        )
        return result

    # -- one rollout per build (issue 11 item 1) ------------------------------------------------------
    def _one_rollout_per_build(self, context, name: str, *, dry_run: bool) -> dict | None:
        """Refuse a run while another run of the build is active; a finished build's rerun is a no-op.

        Decided from the build's rollout record in GitHub and Airflow's state of the run it names,
        whatever this run's id. A dry run writes nothing, so it is shown either way (and needs no GitHub).
        """
        from image_rollout.operators.claim import decide

        if dry_run:
            return None
        decision, why, record, _ = decide(context["ti"], self.github(context), self.plan, name, context["run_id"])
        self.log.info("One rollout per build: %s (%s)", decision, why)
        return self._act_on(context, name, decision, why, record)

    def _claim_build(self, context, name: str) -> dict | None:
        """Take the build for this run (compare-and-swap in GitHub); a run that lost the race is refused."""
        from image_rollout.operators.claim import claim

        if self.superseded_by(name):
            # Superseded: it stops at its first write and writes nothing; it takes no claim either.
            self.log.info("Build %s is superseded: not claiming its rollout", name)
            return None
        decision, why, record = claim(context["ti"], self.github(context), self.plan, name, context["run_id"])
        self.log.info("Rollout of %s: %s (%s)", name, decision, why)
        return self._act_on(context, name, decision, why, record)

    def _act_on(self, context, name: str, decision: str, why: str, record: dict | None) -> NoopRerun | None:
        run_id = context["run_id"]
        if decision == "refuse":
            raise AirflowFailException(
                f"REFUSED: build {name} already has an active rollout, run {record['run_id']}; this run "
                f"({run_id}) writes nothing. {why}. Follow that run, or end it first to take over")
        if decision == "finished":
            text = (f"Rollout of immutable image build {name} already finished ({why}): run {run_id} is a "
                    "no-op rerun and writes nothing")
            self.log.warning("%s", text)
            self.say(escape_mrkdwn(text))
            return {"name": name, "noop": {"finished_by": record["run_id"], "finished_at": record["finished_at"],
                                           "why": why}, "dry_run": False}
        return None

    def _rebuild_once(self, jenkins: JenkinsHook, job: str, name: str, failed_number: int) -> int:
        """Rebuild, unless a later build of the same name exists already (a retried task)."""
        later = jenkins.find_build_by_name(job, name)
        if later is not None and int(later["number"]) > int(failed_number):
            return int(later["number"])
        return int(jenkins.rebuild(job, failed_number))  # with the failed build's own parameters

    @staticmethod
    def _check_images(images: Any, requested: dict) -> dict:
        if not isinstance(images, dict) or set(images) != set(IMAGE_KEYS):
            raise AirflowFailException(f"Jenkins image_ids.json must have keys {list(IMAGE_KEYS)}: {images!r}"[:300])
        for key, value in images.items():
            if not inputs.is_image_id(value):
                raise AirflowFailException(
                    f"Jenkins image_ids.json {key} {value!r} is not an image id (1-12 ASCII digits, nothing else)"[:300]
                )
        images = {k: str(v) for k, v in images.items()}
        for key, value in requested.items():
            if images[key] != value:
                raise AirflowFailException(
                    f"conf image_ids.{key}={value} does not match the Jenkins build's {images[key]}"
                )
        return dict(sorted(images.items()))

    @staticmethod
    def _claim_flag(name: str) -> None:
        """One writer: the newest build owns the flag; an older rollout sees it and stops."""
        active = Variable.get(ACTIVE_BUILD_VARIABLE, default=None)
        if active is None or active == name or verdicts.is_newer(name, active):
            Variable.set(ACTIVE_BUILD_VARIABLE, name)


class PlanRolloutOperator(RolloutOperator):
    """Compute and show the whole rollout: targets, the map each serves now and will serve, and
    the evidence text that would be committed. The only output of a dry run."""

    def execute(self, context) -> dict:
        self.skip_if_noop_rerun(context)
        build = self.build_record(context)
        current = self.flags(context).rule_values()
        rows = []
        for stage in self.plan.stages:
            for t in stage.targets:
                now = current.get(t.target)
                rows.append({
                    "stage": stage.id,
                    "target": t.target,
                    "current": now,
                    "new": build["images"],
                    "action": "none (already serving)" if now == build["images"] else "promote",
                    "via": "change request" if stage.change_request else "flag write",
                })
        placeholder = [ev.Reload(change_id="CHG0000000", worker="to-be-reloaded")]
        preview = ev.render(ev.Evidence(
            build_name=build["name"], image_ids=build["images"], console_url=build["console_url"],
            console_output=build["console_text"], razee_link=self.plan.evidence.razee_link,
            concept_doc=self.plan.evidence.concept_doc, dev_reloads=placeholder, prestage_reloads=placeholder,
        ))
        width = max(len(r["target"]) for r in rows)
        lines = [f"Rollout plan for {build['name']} ({'DRY RUN' if build['dry_run'] else 'live'}):"]
        for r in rows:
            lines.append(f"  {r['stage']:<24} {r['target']:<{width}}  {r['action']:<24} via {r['via']}")
        lines.append(f"  new image map: {json.dumps(build['images'], sort_keys=True)}")
        self.log.info("%s\nEvidence that would be committed to %s:\n%s", "\n".join(lines),
                      self.plan.evidence_path(build["name"]), preview)
        return {"targets": rows, "evidence_path": self.plan.evidence_path(build["name"]),
                "evidence_preview": preview, "dry_run": build["dry_run"]}
