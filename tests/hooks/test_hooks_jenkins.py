"""JenkinsHook against the sandbox's Jenkins."""

from __future__ import annotations

import types

import pytest

from image_rollout.hooks._http import ExternalSystemError
from image_rollout.hooks.jenkins import JenkinsHook

IMAGE_JOB = "Conductors/oceanPI/immutable_image"
REPORT_JOB = "Conductors/Conductors-Infrastructure/reportCarrierWorkerIaasImageCounts"
NEW_BUILD = "533-1251-880-20211101"
PREVIOUS_BUILD = "532-1250-879-20210818"
NEW_MAP = {"dev": "8935101", "prod": "8935154", "prodfr2": "8935160", "stage": "8935122"}


@pytest.fixture
def jenkins(sandbox) -> JenkinsHook:
    return JenkinsHook()


def test_get_job_and_build(jenkins):
    job = jenkins.get_job(IMAGE_JOB)
    assert job["name"] == "immutable_image"
    assert {434, 433} <= {build["number"] for build in job["builds"]}
    build = jenkins.get_build(IMAGE_JOB, 434)
    assert build["result"] == "SUCCESS"
    assert build["building"] is False
    assert build["displayName"] == NEW_BUILD
    assert jenkins.get_build(IMAGE_JOB, "lastSuccessfulBuild")["number"] == 434
    with pytest.raises(ValueError):
        jenkins.get_build(IMAGE_JOB, "../../x")
    with pytest.raises(ValueError):
        jenkins.get_artifact_text(IMAGE_JOB, 434, "../../../config.xml")


def test_find_build_by_name(jenkins):
    assert jenkins.find_build_by_name(IMAGE_JOB, NEW_BUILD)["number"] == 434
    assert jenkins.find_build_by_name(IMAGE_JOB, PREVIOUS_BUILD)["number"] == 433
    assert jenkins.find_build_by_name(IMAGE_JOB, "999-9999-999-20990101") is None


def test_console_and_artifacts(jenkins):
    assert jenkins.get_console_text(IMAGE_JOB, 434).rstrip().endswith("Finished: SUCCESS")
    assert jenkins.get_artifact_json(IMAGE_JOB, 434, "image_ids.json") == NEW_MAP
    assert '"prodfr2"' in jenkins.get_artifact_text(IMAGE_JOB, 434, "image_ids.json")


def test_iter_artifact_lines_streams_the_report(jenkins):
    build = jenkins.get_build(REPORT_JOB, "lastSuccessfulBuild")
    per_carrier = next(a for a in build["artifacts"] if a["relativePath"].endswith("-counts-per-carrier.log"))
    lines = jenkins.iter_artifact_lines(REPORT_JOB, build["number"], per_carrier["relativePath"])
    assert isinstance(lines, types.GeneratorType)
    lines = list(lines)
    assert any(line.startswith("# CARRIER: prod-") for line in lines)
    assert any("imageid:" in line for line in lines)
    assert not any(line.endswith(("\n", "\r")) for line in lines)


def test_rebuild_follows_the_queue_item(jenkins, sandbox, wait_for):
    number = jenkins.rebuild(IMAGE_JOB, poll_interval=0.05, wait_timeout=10)
    assert number == 435
    build = wait_for(lambda: (b := jenkins.get_build(IMAGE_JOB, number)) and not b["building"] and b)
    assert build["result"] == "SUCCESS"
    assert build["displayName"] == NEW_BUILD
    assert jenkins.find_build_by_name(IMAGE_JOB, NEW_BUILD)["number"] == 435, "newest build of that name wins"


def test_build_url(jenkins, sandbox):
    assert jenkins.build_url(IMAGE_JOB, 434) == (
        f"{sandbox.base_url}/jenkins/job/Conductors/job/oceanPI/job/immutable_image/434/"
    )


def test_retries_recover_from_jenkins_5xx(jenkins, sandbox):
    sandbox.faults("jenkins_5xx")
    before = sandbox.calls("jenkins GET")
    assert jenkins.get_build(IMAGE_JOB, 434)["number"] == 434
    assert sandbox.faulted("jenkins GET") == 3, "three 503s..."
    assert sandbox.calls("jenkins GET") - before == 1, "...then the answer"


def test_retries_exhausted_raise(sandbox, secrets):
    sandbox.faults("jenkins_5xx")
    with pytest.raises(ExternalSystemError) as info:
        JenkinsHook(retries=1, retry_wait=0.01).get_build(IMAGE_JOB, 434)
    error = info.value
    assert (error.system, error.status) == ("jenkins", 503)
    assert "failed after 2 attempts" in str(error)
    assert not any(secret in str(error) for secret in secrets)


def test_missing_build_is_a_named_4xx(jenkins, secrets):
    with pytest.raises(ExternalSystemError) as info:
        jenkins.get_build(IMAGE_JOB, 9999)
    error = info.value
    assert error.system == "jenkins"
    assert error.call == "GET /job/Conductors/job/oceanPI/job/immutable_image/9999/api/json"
    assert error.status == 404
    assert str(error).startswith("jenkins GET /job/Conductors/job/oceanPI/job/immutable_image/9999/api/json")
    assert "HTTP 404" in str(error)
    assert not any(secret in str(error) for secret in secrets)
