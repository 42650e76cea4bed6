"""What every rollout task shares: the plan, the verified build, and the guards before a flag write.

The guards are the safety rules that apply to any write (README, "What happens when something
fails": "Stop the line", "Hold one rollout", a newer build's rollout; "One rollout per build"): the freeze
switch holds the write (deferred, no worker slot), so does a hold on this one build (issue 11
item 3), a rollout superseded by a newer build stops without touching the flag again, and so
does a run whose build another run has taken over (issue 11 item 1).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import BaseOperator, Variable
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from image_rollout import lazy_module
from image_rollout.contracts import VERIFY_TASK, approver_name, iso, utcnow
from image_rollout.plan import PLAN_DEFAULT_ARG, RolloutPlan, load_plan
from image_rollout.slack_messages import escape_mrkdwn, notify

if TYPE_CHECKING:
    from image_rollout.payloads import BuildRecord

verdicts = lazy_module("image_rollout.verdicts")
pc = lazy_module("image_rollout.preconditions")

log = logging.getLogger(__name__)

DRIFT_OPTIONS = ["Overwrite", "Skip target", "Stop"]
ACTIVE_BUILD_VARIABLE = "image_rollout_active_build"
FLAG_POOL = "worker_image_flag"


# Hooks are imported when a task runs, not when the DAG is parsed: they bring requests, tenacity
# and the http provider, which would make every parse several times slower.
def flags_hook():
    from image_rollout.hooks.flags import FlagsHook

    return FlagsHook()


def jenkins_hook():
    from image_rollout.hooks.jenkins import JenkinsHook

    return JenkinsHook()


def github_hook():
    from image_rollout.hooks.github import GitHubEvidenceHook

    return GitHubEvidenceHook()


def chlorine_hook():
    from image_rollout.hooks.chlorine import ChlorineHook

    return ChlorineHook()


class RolloutOperator(BaseOperator):
    """Base for the rollout's tasks.

    Its plan is the one its DAG was built from (``default_args[PLAN_DEFAULT_ARG]``, set by
    ``dag_defaults.task_defaults``), else ``$ROLLOUT_PLAN``'s. No ``__init__`` of its own on purpose: Airflow
    wraps every ``__init__`` of an operator's class hierarchy, and each wrapper copies the DAG's Params form
    again for every task of every parse.
    """

    ui_color = "#e8f0fe"
    #: Where the build this task works on was recorded (the rollout's verification; the backout's resolve).
    build_task_id = VERIFY_TASK
    build_key = "return_value"

    @cached_property
    def plan(self) -> RolloutPlan:
        return load_plan(self.dag.default_args.get(PLAN_DEFAULT_ARG) if self.has_dag() else None)

    # -- what one task run keeps: the build record and one instance of each hook -----------------
    def per_run(self, context) -> dict[str, Any]:
        """State of this task run only. A new try or a resumption after a wait has a new task instance
        object, and so starts empty (also when ``dag.test`` runs them on the same operator object). The
        task instance is held with the state, so its identity cannot be reused while the state lives.
        A context without a task instance (a direct call) keeps nothing."""
        ti = context.get("ti")
        if ti is None:
            return {}
        state = getattr(self, "_per_run", None)
        if state is None or state[0] is not ti:
            state = (ti, {})
            self._per_run = state
        return state[1]

    def _hook(self, context, name: str, make) -> Any:
        run = self.per_run(context)
        if name not in run:
            run[name] = make()
        return run[name]

    def flags(self, context):
        """LaunchDarkly (``FlagsHook``) for this task run."""
        return self._hook(context, "flags", lambda: flags_hook())

    def github(self, context):
        """The evidence repository (``GitHubEvidenceHook``) for this task run."""
        return self._hook(context, "github", lambda: github_hook())

    def jenkins(self, context):
        """Jenkins (``JenkinsHook``) for this task run."""
        return self._hook(context, "jenkins", lambda: jenkins_hook())

    def chlorine(self, context):
        """chlorine (``ChlorineHook``) for this task run."""
        return self._hook(context, "chlorine", lambda: chlorine_hook())

    # -- data from earlier tasks ----------------------------------------------------------------
    def skip_if_noop_rerun(self, context) -> dict | None:
        """The verify task's XCom, after skipping this task when it is a no-op rerun of a finished rollout
        (verification said so; nothing after it writes or announces again)."""
        verified = context["ti"].xcom_pull(task_ids=VERIFY_TASK)
        if verified and verified.get("noop"):
            raise AirflowSkipException(f"no-op rerun: {verified['noop']['why']}")
        return verified

    def build_record(self, context) -> BuildRecord:
        """The build this task works on (name, images, console), as verified: fail closed if it is missing.

        Pulled once per task run: it carries the console log, and every step asks for it.
        """
        run = self.per_run(context)
        if "build" not in run:
            build = context["ti"].xcom_pull(task_ids=self.build_task_id, key=self.build_key)
            if not build or not build.get("images"):
                raise RuntimeError(f"no verified build in XCom of {self.build_task_id}; it must run first")
            run["build"] = build
        return run["build"]

    def jenkins_images(self, context, build: BuildRecord) -> dict | None:
        """The build's image map as Jenkins serves it now (its ``image_ids.json``), read once per task run.

        A promotion's map is proved against Jenkins, the system of record, not against XCom, which an
        operator can edit. None for a record that names no Jenkins build (a backout's maps come from
        the flag's history and are checked where it resolves them).
        """
        job, number = build.get("job"), build.get("number")
        if not job or number is None:
            return None
        run = self.per_run(context)
        if "jenkins_images" not in run:
            from image_rollout.inputs import parse_image_ids

            text = self.jenkins(context).get_artifact_text(job, number, "image_ids.json")
            run["jenkins_images"] = parse_image_ids(text)
        return run["jenkins_images"]

    @staticmethod
    def pull(context, task_id: str, map_index: int | None = None) -> Any:
        if map_index is None:
            return context["ti"].xcom_pull(task_ids=task_id)
        return context["ti"].xcom_pull(task_ids=task_id, map_indexes=map_index)

    def say(self, text: str, *, escalate: bool = False) -> None:
        """Post to Slack (progress channel, or the patching channel to escalate); never raises."""
        channel = self.plan.slack.patching_channel if escalate else self.plan.slack.progress_channel
        self.log.info("%s (to Slack %s)", text, channel)  # the task log says it too, where Slack links
        notify(text, channel=channel)

    # -- guards before any write --------------------------------------------------------------
    def frozen(self) -> str | None:
        value = Variable.get(self.plan.freeze.variable, default=None)
        if value in (None, "", "0", "false", "False", "off"):
            return None
        return str(value)

    def hold_if_frozen(self, context) -> None:
        """Stop-the-line: while the freeze Variable is set, defer and look again later."""
        reason = self.frozen()
        if reason is None:
            return
        self.log.warning("Freeze is set (%s=%r): holding %s", self.plan.freeze.variable, reason, self.task_id)
        ti = context["ti"]
        if not ti.xcom_pull(task_ids=self.task_id, key="freeze_announced", map_indexes=ti.map_index):
            self.say(f"Rollout held by freeze ({escape_mrkdwn(reason)}): {escape_mrkdwn(self.task_id)} waits")
            ti.xcom_push(key="freeze_announced", value=True)
        self.defer(
            trigger=TimeDeltaTrigger(timedelta(seconds=self.plan.freeze.poll)),
            method_name="execute",
        )

    def build_hold(self, build_name: str) -> pc.Hold | None:
        """The hold for this build's rollout (README "Hold one rollout"), if any; a malformed hold
        Variable holds (every build, or the entry's build) and each problem is logged as an error."""
        parsed = pc.parse_holds(Variable.get(pc.HOLD_VARIABLE, default=None))
        for problem in parsed["problems"]:
            self.log.error("Invalid hold: %s", problem)
        return pc.check_hold(parsed, build_name)

    def hold_if_held(self, context, build_name: str) -> None:
        """A hold on this build: defer (no worker slot), say why once, look again later; say when it ends."""
        hold = self.build_hold(build_name)
        ti = context["ti"]
        announced = ti.xcom_pull(task_ids=self.task_id, key="build_hold_announced", map_indexes=ti.map_index) or []
        if hold is None:
            if announced:
                self.say(f"Hold on the rollout of {escape_mrkdwn(build_name)} lifted: "
                         f"{escape_mrkdwn(self.task_id)} goes on", escalate=True)
                ti.xcom_push(key="build_hold_announced", value=[])
            return
        self.log.warning("Rollout of %s HELD (%s): %s waits; nothing of this build is written",
                         build_name, hold.reason, self.task_id)
        if hold.reason not in announced:
            self.say(f"Rollout of {escape_mrkdwn(build_name)} HELD at {escape_mrkdwn(self.task_id)}: "
                     f"{escape_mrkdwn(hold.reason)}. Nothing of this build is written while it is held",
                     escalate=True)
            ti.xcom_push(key="build_hold_announced", value=[*announced, hold.reason])
        ti.xcom_push(key="held", value={"precondition": hold.precondition, "reason": hold.reason, "at": iso(utcnow())})
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=self.plan.freeze.poll)), method_name="execute")

    def stop_if_taken_over(self, context, build_name: str) -> None:
        """One rollout per build (issue 11 item 1): stop when another run holds the build's claim now."""
        from image_rollout.operators.claim import holder

        why = holder(self.github(context), self.plan, build_name, context["run_id"])
        if why:
            raise AirflowFailException(f"{why}: this run ({context['run_id']}) writes nothing more")

    def superseded_by(self, build_name: str) -> str | None:
        """The newer build that owns the flag now, if any."""
        active = Variable.get(ACTIVE_BUILD_VARIABLE, default=None)
        if active and active != build_name and verdicts.is_newer(active, build_name):
            return active
        return None

    def stop_if_superseded(self, context, build_name: str) -> None:
        newer = self.superseded_by(build_name)
        if newer is None:
            return
        self.say(
            f"Rollout of {build_name} stopped: superseded by newer build {newer}. "
            "It does not touch the worker-image flag again.",
            escalate=True,
        )
        context["ti"].xcom_push(key="superseded_by", value=newer)
        self._record_supersession(context, build_name, newer)
        raise AirflowSkipException(f"superseded by newer build {newer}: not touching the flag")

    def _record_supersession(self, context, build_name: str, newer: str) -> None:
        """Say so in the evidence file, if this rollout has one yet (once)."""
        from image_rollout.evidence_commits import append_to_evidence

        github = self.github(context)
        if github.get_file(self.plan.evidence_path(build_name)) is None:
            return
        append_to_evidence(
            github, self.plan, context, self.build_record(context), "Superseded",
            (f"Rollout stopped at {iso(utcnow())}: superseded by newer build {newer}; "
             "the worker-image flag was not touched again",),
            f"Record that immutable image build {build_name} was superseded by {newer}",
            key=pc.rollout_key(build_name, "superseded"),
        )

    def guard_build(self, context, build_name: str) -> None:
        """Before any write of this build: its hold, ownership of the flag and of the build's rollout."""
        self.hold_if_held(context, build_name)
        self.stop_if_superseded(context, build_name)
        self.stop_if_taken_over(context, build_name)

    def guard_write(self, context, build_name: str) -> None:
        """Before a flag write or change request: the freeze, then ``guard_build``."""
        self.hold_if_frozen(context)
        self.guard_build(context, build_name)

    def read_rule(self, context, target: str) -> tuple[dict, Any, dict | None]:
        """Guards, then the map the target's rule serves now: every write reads first, so a rerun
        never writes twice and the map it replaces is recorded."""
        build = self.build_record(context)
        self.guard_write(context, build["name"])
        flags = self.flags(context)
        return build, flags, flags.rule_value(target)

    # -- preconditions re-proved before every write (issue 9 item 1) ----------------------------------
    def triggering_user(self, context) -> str | None:
        dag_run = context.get("dag_run")
        return getattr(dag_run, "triggering_user_name", None) if dag_run is not None else None

    def override(self, context) -> dict | None:
        """The override Variable, if it names this build with a reason and a user (README "Overrides")."""
        raw = Variable.get(pc.OVERRIDE_VARIABLE, default=None)
        found = pc.parse_override(raw, self.build_record(context)["name"])
        if found and found["by"] == self.triggering_user(context):
            self.log.warning("Override by %s ignored: the identity that triggered the run may not use it", found["by"])
            return None
        return found

    def approval_settings(self, flags) -> dict | None:
        """The environment's LaunchDarkly approvalSettings, read now (``FlagsHook.approval_settings``)."""
        settings = flags.approval_settings()
        try:
            pc.check_approval_settings(settings)
        except pc.UnsupportedApprovalSettings as exc:
            self.say(f"Rollout stopped before writing: {escape_mrkdwn(str(exc))}", escalate=True)
            raise AirflowFailException(str(exc)) from None
        return settings

    def hold(self, context, hold: pc.Hold, *, poll: float | None = None, method_name: str = "execute",
             kwargs: dict | None = None) -> None:
        """A precondition does not hold: say why once (Slack and log), then look again later (deferred)."""
        ti = context["ti"]
        text = f"Holding {self.task_id}: {hold}. Nothing is promoted until it holds."
        self.log.warning("%s", text)
        announced = ti.xcom_pull(task_ids=self.task_id, key="hold_announced", map_indexes=ti.map_index) or []
        if str(hold) not in announced and hold.precondition not in [a.split(":")[0] for a in announced]:
            self.say(f"Rollout of {escape_mrkdwn(self.build_record(context)['name'])} held at "
                     f"{escape_mrkdwn(self.task_id)}: {escape_mrkdwn(str(hold))}. Nothing is promoted until it holds",
                     escalate=True)
            ti.xcom_push(key="hold_announced", value=[*announced, str(hold)])
        ti.xcom_push(key="held", value={"precondition": hold.precondition, "reason": hold.reason, "at": iso(utcnow())})
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=poll or self.plan.freeze.poll)),
                   method_name=method_name, kwargs=kwargs)

    def pass_wait(self, context, hold: pc.Hold | None) -> None:
        """Hold on ``hold`` unless the override Variable goes past this wait; record an override used."""
        if hold is None:
            return
        found = self.override(context)
        if not pc.overridden(hold, found):
            self.hold(context, hold)
        ti = context["ti"]
        used = {"wait": hold.wait, "by": found["by"], "reason": found["reason"], "held": hold.reason,
                "task": self.task_id, "at": iso(utcnow())}
        ti.xcom_push(key="override", value=used)
        self.say(f"OVERRIDE: {escape_mrkdwn(found['by'])} took rollout of {escape_mrkdwn(found['build_name'])} past "
                 f"the {hold.wait} wait ({escape_mrkdwn(hold.reason)}). Reason: {escape_mrkdwn(found['reason'])}",
                 escalate=True)
        self._record(context, "Override", (
            f"{found['by']} overrode the {hold.wait} wait at {used['at']} for {self.task_id}: {found['reason']}",
            f"What did not hold: {hold.reason}",
        ), f"override-{hold.wait}-{self.task_id}")

    def _record(self, context, title: str, lines: tuple[str, ...], step: str) -> str | None:
        """Append a record to this build's evidence file (keyed, so a rerun does not append it twice)."""
        from image_rollout.evidence_commits import append_to_evidence

        build = self.build_record(context)
        return append_to_evidence(self.github(context), self.plan, context, build, title, lines,
                                  f"Record {title.lower()} for immutable image build {build['name']}",
                                  key=pc.rollout_key(build["name"], step))

    def ours_applied(self, flags, target: str, build: dict, image_map: dict | None = None) -> dict | None:
        """Our own applied request for this target and build (key AND content), from LaunchDarkly."""
        request = find_request(flags, target, build["name"], image_map or build["images"])
        if request and request.get("status") == "completed":
            return request
        return None

    def prove_rule(self, context, flags, target: str, *, needs_request: bool) -> str:
        """Before a write: the map is the verified build's, and the rule is the baseline or our own write.

        Returns ``write`` or ``done``. A rule changed by someone else (drift) is not overwritten: the
        task asks an approver (Overwrite / Skip target / Stop) and waits for the answer.
        """
        build = self.build_record(context)
        problem = pc.check_image_map(build["images"], self.jenkins_images(context, build) or build["images"])
        if problem:
            raise AirflowFailException(str(problem))
        current = flags.rule_value(target)
        ours = self.ours_applied(flags, target, build) if current == build["images"] else None
        state = pc.classify_rule(current, baseline=build["baseline"].get(target), build_map=build["images"],
                                 ours_applied=ours is not None, needs_request=needs_request)
        if state != "drift":
            return state
        ti = context["ti"]
        answer = ti.xcom_pull(task_ids=self.task_id, key="drift_answer", map_indexes=ti.map_index) or {}
        if answer.get("choice") == "Overwrite" and answer.get("current") == current:
            self.log.warning("Drift on %s overwritten by decision of %s", target, answer.get("by"))
            return "write"
        stopped = self.github(context).find_commit(self.plan.evidence_path(build["name"]),
                                            pc.rollout_key(build["name"], f"drift-{target}-stop"))
        if stopped:
            # A person chose Stop on this drift (recorded in the evidence): a later try, whatever started
            # it, stops again instead of asking anew. Fixing the rule ends the drift; then clear the task.
            raise AirflowFailException(f"drift on {target}: Stop was chosen (evidence commit {stopped[0]['sha']}); "
                                       "fix the rule, then clear this task")
        self.ask_drift(context, target, current, build)
        return "write"  # unreachable: ask_drift parks the task

    # -- restoring a rule through a change request (rollback and backout) ------------------------------
    def file_restore_request(self, flags, *, target: str, to: dict, owner: str, comment: str,
                             fields: dict | None = None) -> dict:
        """Our request restoring ``target`` to ``to`` (key ``immutable-image/<owner>/<target>`` AND the map),
        else a new one. Callers ask only while the rule still needs the restore, so an applied request of
        ours means the restore was undone since: a new request is filed, never the old one re-applied."""
        request = find_request(flags, target, owner, to)
        if request is not None and request.get("status") != "completed":
            return request
        fields = {"details": comment, "target": target, "build": owner, **(fields or {})}
        return flags.create_change_request(targets=[target], image_map=to, fields=fields, description=comment,
                                           key=pc.rollout_key(owner, target), reuse_existing=request is None)

    def restore_via_request(self, context, flags, *, target: str, to: dict, owner: str, comment: str,
                            fields: dict | None = None, request: dict | None = None) -> dict:
        """Restore through our keyed request: the change board approves it (deferred until it decides; the
        task then runs ``execute`` again, re-proving everything), this task applies it."""
        from image_rollout.triggers import ChangeRequestTrigger

        if request is None:
            request = self.file_restore_request(flags, target=target, to=to, owner=owner, comment=comment,
                                                fields=fields)
        if request.get("reviewStatus") == "declined":
            raise AirflowFailException(f"restore request {request['_id']} for {target} declined: restore by hand")
        if request.get("reviewStatus") != "approved" and request.get("status") != "completed":
            self.defer(trigger=ChangeRequestTrigger(
                poll=self.plan.change_request.poll, request_id=request["_id"],
                deadline=iso(utcnow() + timedelta(seconds=self.plan.change_request.timeout))),
                method_name="execute")
        return flags.apply_change_request(request["_id"], comment)

    def ask_drift(self, context, target: str, current: dict | None, build: dict) -> None:
        from airflow.sdk.exceptions import TaskAwaitingInput
        from airflow.sdk.execution_time.hitl import upsert_hitl_detail

        baseline = build["baseline"].get(target)
        text = (f"DRIFT on {target}: its rule serves {current!r}, neither the map recorded at verification "
                f"({baseline!r}) nor a promotion this rollout made. The rollout of {build['name']} does not overwrite "
                "it without a person's decision")
        self.log.warning("%s", text)
        ti = context["ti"]
        ti.xcom_push(key="drift", value={"target": target, "current": current, "baseline": baseline, "at": iso(utcnow())})
        self.say(f"{escape_mrkdwn(text)}. Decide in Airflow: Overwrite, Skip target or Stop "
                 f"({self.plan.airflow_base_url}/dags/{ti.dag_id}/runs/{context['run_id']}/tasks/{self.task_id}"
                 "/required_actions)", escalate=True)
        upsert_hitl_detail(
            ti_id=ti.id, options=list(DRIFT_OPTIONS), subject=f"Drift on {target}: overwrite, skip or stop?",
            body=text, defaults=None, multiple=False, params={},
            assigned_users=[{"id": u, "name": u} for u in self.plan.approvers.users],
        )
        raise TaskAwaitingInput(method_name="resume_after_drift", timeout=None)

    def resume_after_drift(self, context, event: dict | None = None, **kwargs):
        event = event or {}
        choice = (event.get("chosen_options") or [None])[0]
        user = event.get("responded_by_user") or {}
        who = approver_name(user)
        if choice not in DRIFT_OPTIONS:
            raise AirflowFailException(f"drift decision {event!r} is not one of {DRIFT_OPTIONS}")
        if who in (self.triggering_user(context), None) or (
                user.get("id") not in self.plan.approvers.users and who not in self.plan.approvers.users):
            raise AirflowFailException(f"drift decision by {who}, who is not an approver other than the trigger")
        ti = context["ti"]
        drift = ti.xcom_pull(task_ids=self.task_id, key="drift", map_indexes=ti.map_index) or {}
        target = drift.get("target", "?")
        self._record(context, "Drift", (
            f"{target} served {drift.get('current')!r}, not the verification baseline {drift.get('baseline')!r}",
            f"{who} chose {choice} at {iso(utcnow())}",
        ), f"drift-{target}-{choice.lower().replace(' ', '-')}")
        self.say(f"Drift on {escape_mrkdwn(target)}: {escape_mrkdwn(who)} chose {choice}", escalate=True)
        if choice == "Stop":
            raise AirflowFailException(f"drift on {target}: {who} chose Stop; nothing written")
        if choice == "Skip target":
            raise AirflowSkipException(f"drift on {target}: {who} chose to skip it; the rule is left as it is")
        ti.xcom_push(key="drift_answer", value={"choice": choice, "current": drift.get("current"), "by": who})
        return self.execute(context)


def find_request(flags, target: str, build_name: str, image_map: dict) -> dict | None:
    """Our request for ``target`` and this build: its key in the description AND the build's map."""
    return flags.find_change_request(target, build_name, image_map)
