"""The runbook's checks as deferrable tasks: test-carrier reloads, the canary soak, adoption.

A gate task returns its figures when it passes and pushes its decision to XCom (key
``decision``) before it fails, so the rollback and the status page can say why.

Inconclusive is not failed (issue 9 item 2): when a gate cannot read its data (chlorine,
PagerDuty or LaunchDarkly down after the hook's retries) it holds, deferred: nothing after it
runs, nothing is rolled back. It escalates once to the patching channel, keeps polling, and
after the plan's ``gates.inconclusive_timeout`` of continuous unreadable data it asks a person
(a Human-in-the-loop request on the gate task itself) to choose "Roll back" (the gate fails;
the rollback restores) or "Keep waiting" (the gate holds and keeps trying). Evidence of failure
(failed reloads, an ``autorecovery_failed`` incident) still fails the gate at once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from image_rollout import lazy_module
from image_rollout.contracts import ROLLBACK_TASK, approver_name, iso, parse_time, utcnow
from image_rollout.operators.base import RolloutOperator
from image_rollout.slack_messages import escape_mrkdwn

if TYPE_CHECKING:
    from image_rollout.payloads import GateDecision, SoakVerdict

verdicts = lazy_module("image_rollout.verdicts")
reports = lazy_module("image_rollout.reports")
triggers = lazy_module("image_rollout.triggers")

ROLL_BACK = "Roll back"
KEEP_WAITING = "Keep waiting"
INCONCLUSIVE_OPTIONS = [ROLL_BACK, KEEP_WAITING]


def _recorded_promotion_time(operator: RolloutOperator, context, task_id: str) -> str:
    """The ``promoted_at`` the promotion task recorded: the reload count starts there."""
    promoted = operator.pull(context, task_id)
    if not promoted or not promoted.get("promoted_at"):
        raise RuntimeError(f"no promotion time in XCom of {task_id}")
    return promoted["promoted_at"]


def _seconds(value: float) -> str:
    value = float(value)
    if value >= 3600 and value % 3600 == 0:
        return f"{value / 3600:g}h"
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g}m"
    return f"{value:g}s"


class _GateOperator(RolloutOperator):
    """A gate: pass, fail, or hold while its data cannot be read (then ask a person)."""

    gate_name = "gate"

    def where(self) -> str:  # pragma: no cover - overridden
        return self.task_id

    def _fail(self, context, where: str, decision: GateDecision) -> None:
        context["ti"].xcom_push(key="decision", value=decision)
        self.say(f"Gate failed at {where}: {escape_mrkdwn(decision['reason'])}", escalate=True)
        raise AirflowFailException(f"gate failed at {where}: {decision['reason']}")

    def _redefer(self, context, resume: dict, *, unreadable_since: str | None = None,
                 escalated: bool = False) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- what every trigger event that is not a verdict means ----------------------------------
    def _handle_non_verdict(self, context, event: dict, resume: dict) -> None:
        """Handle ``error``/``inconclusive``/``recovered``/``inconclusive_timeout``; return for a verdict."""
        verdict = event.get("verdict")
        if verdict == "error":
            if event.get("permanent"):
                # A malformed answer will not get better: fail at once (no retry), the rollback restores.
                self._fail(context, self.where(), {**event, "verdict": "fail",
                                                   "reason": f"malformed data: {event['reason']}"})
            raise RuntimeError(f"{self.where()} could not be evaluated: {event['reason']}")
        if verdict == "inconclusive":
            self._escalate_unreadable(context, event)
            self._redefer(context, resume, unreadable_since=event["unreadable_since"], escalated=True)
        if verdict == "recovered":
            self.say(f"{self.where()}: data readable again (unreadable since {event.get('unreadable_since')}); "
                     "the gate goes on.", escalate=True)
            context["ti"].xcom_push(key="inconclusive", value=None)
            self._redefer(context, resume)
        if verdict == "inconclusive_timeout":
            self._ask(context, event, resume)
        if verdict in ("pass", "fail"):
            self._close_outage(context, verdict)

    def _close_outage(self, context, verdict: str) -> None:
        """A verdict on readable data after an escalated outage: the patching channel hears the end of it."""
        ti = context["ti"]
        if ti.xcom_pull(task_ids=self.task_id, key="inconclusive", map_indexes=ti.map_index):
            self.say(f"{self.where()}: data readable again; the gate decided: {verdict}.", escalate=True)
            ti.xcom_push(key="inconclusive", value=None)

    def _on_read_error(self, context, exc: Exception, resume: dict) -> None:
        """A read the operator made itself failed: permanent fails the gate, transient holds it."""
        if triggers.is_permanent(exc):
            self._fail(context, self.where(), {"verdict": "fail", "reason": f"malformed data: {exc}"[:500]})
        self.log.warning("%s: data unreadable (%s); holding", self.where(), exc)
        self._redefer(context, resume, unreadable_since=iso(utcnow()), escalated=False)

    def _escalate_unreadable(self, context, event: dict) -> None:
        timeout = self.plan.gates.inconclusive_timeout
        ask_at = iso(parse_time(event["unreadable_since"]) + timedelta(seconds=timeout))
        context["ti"].xcom_push(key="inconclusive", value={
            "unreadable_since": event["unreadable_since"], "reason": event["reason"], "ask_at": ask_at,
        })
        self.say(
            f"{self.where()}: HOLDING, its data cannot be read ({escape_mrkdwn(event['reason'][:200])}). "
            "Inconclusive is not failed: nothing further is promoted and nothing is rolled back; the gate "
            f"keeps trying. If the data stays unreadable until {ask_at} ({_seconds(timeout)}), a person is "
            f"asked to choose \"{ROLL_BACK}\" or \"{KEEP_WAITING}\" in Airflow.",
            escalate=True,
        )

    # -- the person's choice after gates.inconclusive_timeout ----------------------------------
    def _approvers(self) -> list[dict]:
        approvers = getattr(self.plan, "approvers", None)
        users = approvers.get("users") if isinstance(approvers, dict) else getattr(approvers, "users", None)
        return [{"id": str(u), "name": str(u)} for u in users or []]

    def _required_actions_link(self, context) -> str:
        ti = context["ti"]
        return (f"{self.plan.airflow_base_url}/dags/{ti.dag_id}/runs/{ti.run_id}/tasks/{ti.task_id}"
                "/required_actions")

    def _ask(self, context, event: dict, resume: dict) -> None:
        from airflow.sdk.exceptions import TaskAwaitingInput
        from airflow.sdk.execution_time.hitl import upsert_hitl_detail

        waited = _seconds(round(float(event.get("unreadable_seconds") or self.plan.gates.inconclusive_timeout)))
        subject = f"{self.where()}: data unreadable for {waited}. Roll back, or keep waiting?"
        body = (
            f"The gate **{self.where()}** of build `{context['params'].get('build_name', '?')}` cannot read its "
            f"data since {event['unreadable_since']}:\n\n    {event['reason'][:300]}\n\n"
            "Nothing was rolled back: an outage is not a failed gate. Choose **Roll back** to fail the gate "
            "and restore the targets it vouches for, or **Keep waiting** to hold and keep trying (you are "
            f"asked again after {_seconds(self.plan.gates.inconclusive_timeout)} more without data)."
        )
        upsert_hitl_detail(
            ti_id=context["task_instance"].id, options=list(INCONCLUSIVE_OPTIONS), subject=subject, body=body,
            defaults=None, multiple=False, params={}, assigned_users=self._approvers() or None,
        )
        context["ti"].xcom_push(key="inconclusive", value={
            "unreadable_since": event["unreadable_since"], "reason": event["reason"], "asked_at": iso(utcnow()),
        })
        self.say(
            f"Decision needed: {self.where()} could not read its data for {waited} "
            f"({escape_mrkdwn(event['reason'][:200])}). Nothing was rolled back. Choose \"{ROLL_BACK}\" or "
            f"\"{KEEP_WAITING}\" in Airflow: {self._required_actions_link(context)}",
            escalate=True,
        )
        raise TaskAwaitingInput(method_name="execute_decision",
                                kwargs={"resume": resume, "unreadable": {k: event.get(k) for k in (
                                    "unreadable_since", "reason", "unreadable_seconds")}})

    def execute_decision(self, context, event: dict, resume: dict, unreadable: dict | None = None) -> Any:
        unreadable = unreadable or {}
        chosen = list(event.get("chosen_options") or [])
        who = approver_name(event.get("responded_by_user"))
        at = event.get("responded_at")
        answer = {"chosen": chosen[0] if chosen else None, "by": who,
                  "at": at.isoformat() if hasattr(at, "isoformat") else at}
        context["ti"].xcom_push(key="inconclusive_decision", value=answer)
        if chosen == [ROLL_BACK]:
            self._fail(context, self.where(), {
                "verdict": "fail", "decided_by": who, "decided_at": answer["at"],
                "reason": (f"data unreadable since {unreadable.get('unreadable_since')} "
                           f"({unreadable.get('reason')}); {who} chose {ROLL_BACK}"),
            })
        if chosen == [KEEP_WAITING]:
            self.say(f"{self.where()}: {escape_mrkdwn(who)} chose {KEEP_WAITING}. The gate holds and keeps "
                     f"trying; asks again after {_seconds(self.plan.gates.inconclusive_timeout)} more without data.",
                     escalate=True)
            self._redefer(context, resume, unreadable_since=iso(utcnow()), escalated=True)
        # No valid answer (a timeout sweep, an unknown option): never a default; ask again.
        self.log.warning("%s: no valid answer %r; asking again", self.where(), chosen)
        self._ask(context, {"unreadable_since": unreadable.get("unreadable_since") or iso(utcnow()),
                            "reason": unreadable.get("reason") or "unknown",
                            "unreadable_seconds": unreadable.get("unreadable_seconds")}, resume)
        return None


class ReloadCheckOperator(_GateOperator):
    """Runbook: "Three worker nodes in <carrier> must be reloaded successfully with the new image".

    Counts autorecovery reloads as they happen; after the grace period asks chlorine to reload the
    workers still missing, then waits for those until the timeout. Holds while chlorine cannot be read.

    :param carrier: the test carrier (``stgiks-dal10-carrier0``).
    :param image_key: which image id of the map the carrier boots (``dev``, ``stage``).
    :param promote_task_id: the task that promoted the carrier's target (its time starts the count).
    """

    def __init__(self, *, carrier: str, image_key: str, promote_task_id: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.carrier = carrier
        self.image_key = image_key
        self.promote_task_id = promote_task_id

    def where(self) -> str:
        return self.carrier

    def _defer(self, context, since: str, phase: str, seconds: float, *, unreadable_since: str | None = None,
               escalated: bool = False) -> None:
        build = self.build_record(context)
        deadline = parse_time(since) + timedelta(seconds=seconds)
        self.defer(
            trigger=triggers.ReloadsTrigger(
                poll=self.plan.reloads.poll, deadline=iso(max(deadline, utcnow())), carrier=self.carrier,
                image_id=build["images"][self.image_key], since=since, required=self.plan.reloads.required,
                max_failed=self.plan.reloads.max_failed,
                inconclusive_timeout=self.plan.gates.inconclusive_timeout, unreadable_since=unreadable_since,
                escalated=escalated,
            ),
            method_name="execute_complete",
            kwargs={"phase": phase},
        )

    def _redefer(self, context, resume: dict, *, unreadable_since: str | None = None,
                 escalated: bool = False) -> None:
        phase = resume.get("phase", "grace")
        since = _recorded_promotion_time(self, context, self.promote_task_id)
        seconds = self.plan.reloads.grace if phase == "grace" else self.plan.reloads.timeout
        self._defer(context, since, phase, seconds, unreadable_since=unreadable_since, escalated=escalated)

    def execute(self, context) -> None:
        since = _recorded_promotion_time(self, context, self.promote_task_id)
        self._defer(context, since, "grace", self.plan.reloads.grace)

    def execute_complete(self, context, event: dict, phase: str = "grace") -> dict:
        self._handle_non_verdict(context, event, {"phase": phase})
        build = self.build_record(context)
        image_id = build["images"][self.image_key]
        since = _recorded_promotion_time(self, context, self.promote_task_id)
        if event["verdict"] == "pass":
            figures = event["figures"]
            self.say(f"{self.carrier}: {figures['succeeded_with_new_image']} workers reloaded with image {image_id}")
            return {"carrier": self.carrier, "image_id": image_id, **figures}
        if event["verdict"] == "fail":
            self._fail(context, self.carrier, event)
        chlorine = self.chlorine(context)
        try:
            reloads = chlorine.list_reloads(carrier=self.carrier, since=since)
            decision = verdicts.evaluate_reloads(reloads, image_id=image_id, required=self.plan.reloads.required,
                                              max_failed=self.plan.reloads.max_failed)
        except Exception as exc:
            self._on_read_error(context, exc, {"phase": phase})
        if decision.verdict == "pass":
            return {"carrier": self.carrier, "image_id": image_id, **decision.figures}
        if decision.verdict == "fail" or phase == "final":
            self._fail(context, self.carrier, decision.as_event())
        # Grace period over: ask chlorine for the reloads still missing. Reloads already requested and
        # still running (a retried task) count as asked for, so none is requested twice.
        pending = sum(1 for r in reloads if r.get("kind") == "requested" and r.get("status") == "pending")
        missing = self.plan.reloads.required - decision.figures["succeeded_with_new_image"] - pending
        if missing > 0:
            self.hold_if_held(context, build["name"])  # a reload is a write of the build too
        for _ in range(max(0, missing)):
            r = chlorine.request_reload(self.carrier, reason=f"immutable image {build['name']} acceptance test")
            self.log.info("Requested chlorine reload %s of %s (%s)", r.get("id"), r.get("worker"), r.get("change_id"))
        self._defer(context, since, "final", self.plan.reloads.timeout)
        return {}  # unreachable: defer raises


class SoakGateOperator(_GateOperator):
    """Runbook canary: at least ``min_autorecovery_reloads`` successful autorecovery reloads with the
    new image in the region, at least ``min_duration`` elapsed, and no ``autorecovery_failed``
    incident on the armada-infra PagerDuty service. An incident fails the soak at once.

    Measured from the region's *latest* promotion, read from LaunchDarkly at every poll (the
    latest applied change request for the region's rule, ``appliedDate``), and never earlier than
    this rollout's own promotion and rollback of the region (XCom): reloads from before a rollback
    never count. While the region does not serve the build (rolled back, then the gate cleared)
    the gate holds and never passes.

    Returns (XCom ``return_value``) ``{"region", "build", "image_map", "verdict": "pass", "reason",
    "since", "decided_at", "figures": {...}}``: ``since`` is the promotion time the verdict counts from.

    :param region: the canary region (``ap-south``).
    :param image_key: image key of the region's carriers.
    :param promote_task_id: the task that promoted the region.
    """

    def __init__(self, *, region: str, image_key: str, promote_task_id: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.region = region
        self.image_key = image_key
        self.promote_task_id = promote_task_id

    def where(self) -> str:
        return self.region

    def floors(self, context) -> list[str]:
        """Times the region's rule changed as this rollout recorded them: its promotion, its rollback."""
        floors = []
        promoted = self.pull(context, self.promote_task_id)
        if isinstance(promoted, dict) and promoted.get("promoted_at"):
            floors.append(promoted["promoted_at"])
        rollback = self.pull(context, ROLLBACK_TASK)
        if isinstance(rollback, dict):
            for item in rollback.get("rolled_back") or []:
                if isinstance(item, dict) and item.get("target") == self.region:
                    # When the rollback did not record its time, count from now: never from before it.
                    floors.append(item.get("at") or rollback.get("rolled_back_at") or iso(utcnow()))
        return floors

    def _start(self, context, *, unreadable_since: str | None = None, escalated: bool = False,
               holding: bool = False) -> None:
        build = self.build_record(context)
        soak = self.plan.soak
        self.defer(
            trigger=triggers.SoakTrigger(
                poll=soak.poll, incident_poll=soak.incident_poll, deadline=None, region=self.region,
                image_map=build["images"],
                image_id=build["images"][self.image_key], floors=self.floors(context),
                min_duration=soak.min_duration, min_reloads=soak.min_autorecovery_reloads, timeout=soak.timeout,
                incident_title=soak.incident_title, holding=holding,
                inconclusive_timeout=self.plan.gates.inconclusive_timeout, unreadable_since=unreadable_since,
                escalated=escalated,
            ),
            method_name="execute_complete",
            kwargs={"holding": holding},
        )

    def _redefer(self, context, resume: dict, *, unreadable_since: str | None = None,
                 escalated: bool = False) -> None:
        self._start(context, unreadable_since=unreadable_since, escalated=escalated,
                    holding=bool(resume.get("holding")))

    def execute(self, context) -> None:
        self._start(context)

    def execute_complete(self, context, event: dict, holding: bool = False) -> SoakVerdict | dict:
        self._handle_non_verdict(context, event, {"holding": holding})
        build = self.build_record(context)
        verdict = event["verdict"]
        if verdict == "not_serving":
            serves = event.get("serves")
            context["ti"].xcom_push(key="hold", value={"reason": event["reason"], "serves": serves,
                                                       "at": iso(utcnow())})
            self.say(
                f"Canary soak in {self.region} HOLDS: {self.region} does not serve build {build['name']} now "
                f"(it serves {escape_mrkdwn(gates_map(serves))}). The soak never passes while it does not; it "
                f"goes on once {self.region} serves the build again, counting only data since that promotion.",
                escalate=True,
            )
            self._start(context, holding=True)
        if verdict == "serving":
            context["ti"].xcom_push(key="hold", value=None)
            self.say(f"Canary soak in {self.region}: {self.region} serves build {build['name']} again "
                     f"(promoted {event['since']}); the soak counts from there.", escalate=True)
            self._start(context)
        if verdict == "pass":
            result: SoakVerdict = {
                "region": self.region, "build": build["name"], "image_map": build["images"], "verdict": "pass",
                "reason": event["reason"], "since": event["since"],
                "decided_at": event.get("decided_at") or iso(utcnow()), "figures": event["figures"]}
            context["ti"].xcom_push(key="decision", value=result)
            self.say(f"Canary soak in {self.region} passed: {escape_mrkdwn(event['reason'])} "
                     f"(since the promotion at {event['since']})")
            return result
        if verdict == "deadline":
            event = {**event, "reason": f"soak in {self.region} did not finish before its time limit"}
        self._fail(context, self.region, event)
        return {}


def gates_map(image_map: dict | None) -> str:
    if not image_map:
        return "no single image map"
    return " ".join(f"{k}={v}" for k, v in sorted(image_map.items()))


class MonitorAdoptionOperator(RolloutOperator):
    """Runbook "Monitoring rollout": read each new image-count report and say how many workers per
    prod carrier run the new image, until the plan's threshold or its time limit."""

    def execute(self, context, event: dict | None = None) -> dict:
        build = self.build_record(context)
        ti = context["ti"]
        started = ti.xcom_pull(task_ids=self.task_id, key="started") or iso(utcnow())
        ti.xcom_push(key="started", value=started)
        jenkins = self.jenkins(context)
        job = self.plan.jenkins.report_job
        report = jenkins.get_build(job, "lastSuccessfulBuild")
        number = int(report["number"])
        account = self.plan.jenkins.report_account
        carriers = reports.parse_carrier_counts(
            jenkins.iter_artifact_lines(job, number, f"{account}-counts-per-carrier.log")
        )
        new_ids = {build["images"]["prod"], build["images"]["prodfr2"]}
        figures = reports.adoption(carriers, new_ids)
        figures["report_build"] = number
        ti.xcom_push(key="adoption", value=figures)
        self.log.info("Adoption in report #%s: %s%% (%s/%s workers)", number, figures["percent"],
                      figures["new"], figures["total"])
        if figures["percent"] >= self.plan.adoption.threshold_percent:
            self.say(self._summary(build["name"], figures, done=True))
            return figures
        deadline = parse_time(started) + timedelta(seconds=self.plan.adoption.timeout)
        if utcnow() >= deadline:
            self.say(self._summary(build["name"], figures, done=False), escalate=True)
            raise AirflowFailException(
                f"adoption {figures['percent']}% below {self.plan.adoption.threshold_percent}% at the time limit"
            )
        self.defer(
            trigger=triggers.ReportBuildTrigger(poll=self.plan.adoption.poll, deadline=iso(deadline), job=job,
                                                after_number=number),
            method_name="execute",
        )
        return figures

    def _summary(self, name: str, figures: dict, *, done: bool) -> str:
        head = (f"Rollout of {name}: {figures['percent']}% of prod workers run the new image"
                if done else
                f"Rollout of {name}: adoption stuck at {figures['percent']}% at the time limit")
        rows = [f"{escape_mrkdwn(c)}: {v['new']}/{v['total']}" for c, v in figures["carriers"].items()]
        return head + "\n" + "\n".join(rows)
