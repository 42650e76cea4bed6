"""Jenkins: what the hooks read and do, through `python-jenkins` (the client most Jenkins automation
uses): folders, job and build info, console, artifacts, build_job with parameters, the queue item
and its executable, and the CSRF crumb."""

from __future__ import annotations

import time

import jenkins
import pytest
import requests

from include.sandbox import server

IMAGE_JOB = "Conductors/oceanPI/immutable_image"
REPORT_JOB = "Conductors/Conductors-Infrastructure/reportCarrierWorkerIaasImageCounts"
NEW_BUILD = "533-1251-880-20211101"
NEW_MAP = {"dev": "8935101", "prod": "8935154", "prodfr2": "8935160", "stage": "8935122"}


def client(sandbox) -> jenkins.Jenkins:
    return jenkins.Jenkins(sandbox.base + "/jenkins", username="rollout", password="api-token", timeout=5)


def executable(server_: jenkins.Jenkins, queue_id: int, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        item = server_.get_queue_item(queue_id)
        if item.get("executable"):
            return item["executable"]
        assert time.monotonic() < deadline, f"queue item {queue_id} never got an executable: {item}"
        time.sleep(0.05)


def test_python_jenkins_reads_and_builds(sandbox):
    j = client(sandbox)
    assert j.get_version() == "2.426.3"
    names = {job["fullname"] for job in j.get_all_jobs()}
    assert {IMAGE_JOB, REPORT_JOB, "Conductors/Conductors-Infrastructure/SmithPackageSync-V2"} <= names
    job = j.get_job_info(IMAGE_JOB)
    assert job["lastSuccessfulBuild"]["number"] == 434
    info = j.get_build_info(IMAGE_JOB, 434)
    assert info["result"] == "SUCCESS" and info["displayName"] == NEW_BUILD
    params = next(a for a in info["actions"] if a.get("_class") == "hudson.model.ParametersAction")
    assert {p["name"]: p["value"] for p in params["parameters"]} == {"BUILD_NAME": NEW_BUILD}
    assert j.get_build_console_output(IMAGE_JOB, 434).rstrip().endswith("Finished: SUCCESS")
    assert j.get_build_artifact(IMAGE_JOB, 434, "image_ids.json") == NEW_MAP

    # The crumb: python-jenkins asks crumbIssuer once and sends it (with the session cookie) on POSTs.
    queue_id = j.build_job(IMAGE_JOB, {"BUILD_NAME": NEW_BUILD})
    assert j.crumb and j.crumb["crumbRequestField"] == "Jenkins-Crumb"
    assert "executable" not in j.get_queue_item(queue_id)  # the queue holds it for a moment first
    number = executable(j, queue_id)["number"]
    assert number == 435
    rebuilt = j.get_build_info(IMAGE_JOB, number)
    params = next(a for a in rebuilt["actions"] if a.get("_class") == "hudson.model.ParametersAction")
    assert {p["name"]: p["value"] for p in params["parameters"]}["BUILD_NAME"] == NEW_BUILD
    # A plain build of the parameterized job is refused, as Jenkins does ("Nothing is submitted").
    with pytest.raises((jenkins.JenkinsException, requests.HTTPError)):
        j.build_job(IMAGE_JOB)
    report = j.build_job(REPORT_JOB)
    assert executable(j, report)["number"] > 0


def test_posts_without_a_crumb_are_refused(sandbox):
    j = client(sandbox)
    j.crumb = False  # python-jenkins' own switch for a server that issues no crumbs
    with pytest.raises((jenkins.JenkinsException, requests.HTTPError)):
        j.build_job(IMAGE_JOB, {"BUILD_NAME": NEW_BUILD})


def test_a_wrong_jenkins_answer_fails(sandbox, monkeypatch):
    """Negative control: a crumb issuer that answers without `crumbRequestField` breaks python-jenkins'
    POSTs, and a queue item that never names its executable is caught."""
    real = server.SYSTEMS["/jenkins"]

    def broken(sb, req):
        resp = real[1](sb, req)
        if req.path.startswith("/crumbIssuer") and isinstance(resp.body, dict):
            resp.body = {"crumb": resp.body["crumb"]}
        if req.path.startswith("/queue/item") and isinstance(resp.body, dict):
            resp.body = {k: v for k, v in resp.body.items() if k != "executable"}
        return resp

    monkeypatch.setitem(server.SYSTEMS, "/jenkins", (real[0], broken))
    with pytest.raises(KeyError):
        client(sandbox).build_job(IMAGE_JOB, {"BUILD_NAME": NEW_BUILD})
    j = client(sandbox)
    j.crumb = False
    headers = {}
    session = requests.Session()
    crumb = session.get(sandbox.base + "/jenkins/crumbIssuer/api/json", timeout=5).json()["crumb"]
    headers["Jenkins-Crumb"] = crumb
    r = session.post(sandbox.base + "/jenkins/job/Conductors/job/oceanPI/job/immutable_image/buildWithParameters",
                     params={"BUILD_NAME": NEW_BUILD}, headers=headers, timeout=5)
    queue_id = int(r.headers["Location"].rstrip("/").rsplit("/", 1)[-1])
    with pytest.raises(AssertionError, match="never got an executable"):
        executable(j, queue_id, timeout=0.6)
