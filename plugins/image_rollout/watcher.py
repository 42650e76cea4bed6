"""Find the newest successful immutable_image build that SmithPackageSync-V2 started.

Runbook: the immutable_image job "is triggered after a successful run of the SmithPackageSync-v2
job". The watcher DAG uses this when the Jenkins webhook did not start the rollout itself.
"""

from __future__ import annotations

from image_rollout.hooks.jenkins import JenkinsHook
from image_rollout.inputs import is_build_name
from image_rollout.plan import RolloutPlan


def _upstream_causes(jenkins_build: dict) -> list[tuple[str, int]]:
    causes = []
    for action in jenkins_build.get("actions") or []:
        for cause in (action or {}).get("causes") or []:
            if cause.get("upstreamProject") and cause.get("upstreamBuild") is not None:
                causes.append((str(cause["upstreamProject"]).strip("/"), int(cause["upstreamBuild"])))
    return causes


def newest_rollout_candidate(plan: RolloutPlan, *, scan: int = 10) -> dict | None:
    """The newest successful image build whose upstream SmithPackageSync-V2 build succeeded."""
    jenkins = JenkinsHook()
    job = jenkins.get_job(plan.jenkins.image_job)
    upstream = plan.jenkins.upstream_job.strip("/")
    for ref in sorted(job.get("builds") or [], key=lambda b: -int(b["number"]))[:scan]:
        jenkins_build = jenkins.get_build(plan.jenkins.image_job, ref["number"])
        name = jenkins_build.get("displayName") or ""
        if jenkins_build.get("result") != "SUCCESS" or not is_build_name(name):
            continue
        for project, number in _upstream_causes(jenkins_build):
            if project == upstream and jenkins.get_build(upstream, number).get("result") == "SUCCESS":
                return {"build_name": name, "build_number": int(jenkins_build["number"])}
    return None
