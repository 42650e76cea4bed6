"""The runbook's checks as deferrable tasks: test-carrier reloads, the canary soak, adoption.

A gate task returns its figures when it passes and pushes its decision to XCom (key
``decision``) before it fails, so the rollback and the status page can say why.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk.exceptions import AirflowFailException

from image_rollout import gates, reports
from image_rollout.operators.base import RolloutOperator, chlorine_hook, iso, jenkins_hook, utcnow
from image_rollout.slack import escape_mrkdwn
from image_rollout.triggers import ReloadsTrigger, ReportBuildTrigger, SoakTrigger


def _promoted_at(operator: RolloutOperator, context, task_id: str) -> str:
    promoted = operator.pull(context, task_id)
    if not promoted or not promoted.get("promoted_at"):
        raise RuntimeError(f"no promotion time in XCom of {task_id}")
    return promoted["promoted_at"]


class _GateOperator(RolloutOperator):
    def _fail(self, context, where: str, decision: dict) -> None:
        context["ti"].xcom_push(key="decision", value=decision)
        self.say(f"Gate failed at {where}: {escape_mrkdwn(decision['reason'])}", escalate=True)
        raise AirflowFailException(f"gate failed at {where}: {decision['reason']}")

    @staticmethod
    def _raise_on_error(event: dict, what: str) -> None:
        if event.get("verdict") == "error":
            # Not a verdict: the data could not be read. Retry; after the last retry the task fails
            # and the gate fails closed.
            raise RuntimeError(f"{what} could not be evaluated: {event['reason']}")


class ReloadCheckOperator(_GateOperator):
    """Runbook: "Three worker nodes in <carrier> must be reloaded successfully with the new image".

    Counts autorecovery reloads as they happen; after the grace period asks chlorine to reload the
    workers still missing, then waits for those until the timeout.

    :param carrier: the test carrier (``stgiks-dal10-carrier0``).
    :param image_key: which image id of the map the carrier boots (``dev``, ``stage``).
    :param promote_task_id: the task that promoted the carrier's target (its time starts the count).
    """

    template_fields = ("carrier",)

    def __init__(self, *, carrier: str, image_key: str, promote_task_id: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.carrier = carrier
        self.image_key = image_key
        self.promote_task_id = promote_task_id

    def _defer(self, context, since: str, phase: str, seconds: float) -> None:
        build = self.build(context)
        deadline = gates.parse_time(since) + timedelta(seconds=seconds)
        self.defer(
            trigger=ReloadsTrigger(
                poll=self.plan.reloads.poll, deadline=iso(max(deadline, utcnow())), carrier=self.carrier,
                image_id=build["images"][self.image_key], since=since, required=self.plan.reloads.required,
                max_failed=self.plan.reloads.max_failed,
            ),
            method_name="execute_complete",
            kwargs={"phase": phase},
        )

    def execute(self, context) -> None:
        since = _promoted_at(self, context, self.promote_task_id)
        self._defer(context, since, "grace", self.plan.reloads.grace)

    def execute_complete(self, context, event: dict, phase: str = "grace") -> dict:
        self._raise_on_error(event, f"reloads on {self.carrier}")
        build = self.build(context)
        image_id = build["images"][self.image_key]
        since = _promoted_at(self, context, self.promote_task_id)
        if event["verdict"] == "pass":
            figures = event["figures"]
            self.say(f"{self.carrier}: {figures['succeeded_with_new_image']} workers reloaded with image {image_id}")
            return {"carrier": self.carrier, "image_id": image_id, **figures}
        if event["verdict"] == "fail":
            self._fail(context, self.carrier, event)
        chlorine = chlorine_hook()
        reloads = chlorine.list_reloads(carrier=self.carrier, since=since)
        decision = gates.evaluate_reloads(reloads, image_id=image_id, required=self.plan.reloads.required,
                                          max_failed=self.plan.reloads.max_failed)
        if decision.verdict == "pass":
            return {"carrier": self.carrier, "image_id": image_id, **decision.figures}
        if decision.verdict == "fail" or phase == "final":
            self._fail(context, self.carrier, decision.as_event())
        # Grace period over: ask chlorine for the reloads still missing. Reloads already requested and
        # still running (a retried task) count as asked for, so none is requested twice.
        pending = sum(1 for r in reloads if r.get("kind") == "requested" and r.get("status") == "pending")
        missing = self.plan.reloads.required - decision.figures["succeeded_with_new_image"] - pending
        for _ in range(max(0, missing)):
            r = chlorine.request_reload(self.carrier, reason=f"immutable image {build['name']} acceptance test")
            self.log.info("Requested chlorine reload %s of %s (%s)", r.get("id"), r.get("worker"), r.get("change_id"))
        self._defer(context, since, "final", self.plan.reloads.timeout)
        return {}  # unreachable: defer raises


class SoakGateOperator(_GateOperator):
    """Runbook canary: at least ``min_autorecovery_reloads`` successful autorecovery reloads with the
    new image in the region, at least ``min_duration`` elapsed, and no ``autorecovery_failed``
    incident on the armada-infra PagerDuty service. An incident fails the soak at once.

    :param region: the canary region (``ap-south``).
    :param image_key: image key of the region's carriers.
    :param promote_task_id: the task that promoted the region.
    """

    def __init__(self, *, region: str, image_key: str, promote_task_id: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.region = region
        self.image_key = image_key
        self.promote_task_id = promote_task_id

    def execute(self, context) -> None:
        build = self.build(context)
        started = _promoted_at(self, context, self.promote_task_id)
        soak = self.plan.soak
        deadline = gates.parse_time(started) + timedelta(seconds=soak.timeout + soak.poll)
        self.defer(
            trigger=SoakTrigger(
                poll=soak.poll, deadline=iso(max(deadline, utcnow())), region=self.region,
                image_id=build["images"][self.image_key], started_at=started, min_duration=soak.min_duration,
                min_reloads=soak.min_autorecovery_reloads, timeout=soak.timeout, incident_title=soak.incident_title,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context, event: dict) -> dict:
        self._raise_on_error(event, f"the {self.region} soak")
        if event["verdict"] == "pass":
            self.say(f"Canary soak in {self.region} passed: {escape_mrkdwn(event['reason'])}")
            return {"region": self.region, **event}
        if event["verdict"] == "deadline":
            event = {**event, "reason": f"soak in {self.region} did not finish before its time limit"}
        self._fail(context, self.region, event)
        return {}


class MonitorAdoptionOperator(RolloutOperator):
    """Runbook "Monitoring rollout": read each new image-count report and say how many workers per
    prod carrier run the new image, until the plan's threshold or its time limit."""

    def execute(self, context, event: dict | None = None) -> dict:
        build = self.build(context)
        ti = context["ti"]
        started = ti.xcom_pull(task_ids=self.task_id, key="started") or iso(utcnow())
        ti.xcom_push(key="started", value=started)
        jenkins = jenkins_hook()
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
        deadline = gates.parse_time(started) + timedelta(seconds=self.plan.adoption.timeout)
        if utcnow() >= deadline:
            self.say(self._summary(build["name"], figures, done=False), escalate=True)
            raise AirflowFailException(
                f"adoption {figures['percent']}% below {self.plan.adoption.threshold_percent}% at the time limit"
            )
        self.defer(
            trigger=ReportBuildTrigger(poll=self.plan.adoption.poll, deadline=iso(deadline), job=job,
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
