"""The sandbox against its contract (include/sandbox/API.md), over real HTTP to an in-process server.

The hooks are written from the same contract, so what these tests pin is what the hooks may rely on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
import urllib.parse
from datetime import UTC, datetime, timedelta

import pytest
import requests

from include.sandbox import serve_in_thread

PREVIOUS_MAP = {"dev": "8495980", "prod": "8496814", "prodfr2": "8496850", "stage": "8496586"}
NEW_MAP = {"dev": "8935101", "prod": "8935154", "prodfr2": "8935160", "stage": "8935122"}
PREVIOUS_BUILD = "532-1250-879-20210818"
NEW_BUILD = "533-1251-880-20211101"
TARGETS = [
    "dev-sjc04-carrier12", "dev-south", "prestage-mon01-carrier1", "prestage-south", "stage-dal10-carrier0",
    "stage-south", "ap-south", "ap-north", "eu-central", "uk-south", "us-east", "us-south", "br-sao", "ca-tor",
    "jp-osa", "eu-fr2",
]
IMAGE_JOB = "/jenkins/job/Conductors/job/oceanPI/job/immutable_image"
SMITH_JOB = "/jenkins/job/Conductors/job/Conductors-Infrastructure/job/SmithPackageSync-V2"
REPORT_JOB = "/jenkins/job/Conductors/job/Conductors-Infrastructure/job/reportCarrierWorkerIaasImageCounts"
FLAG = "/launchdarkly/api/v2/flags/default/worker-image"
APPROVALS = "/launchdarkly/api/v2/projects/default/flags/worker-image/environments/production/approval-requests"
CONTENTS = "/github/api/v3/repos/alchemy-conductors/team/contents"
EVIDENCE = f"train_evidence/smith-immutable-image/immutableimage_{NEW_BUILD}_evidence.md"
RELOADS = "/chlorine/api/v1/reloads"
SEMANTIC = {"Content-Type": "application/json; domain-model=launchdarkly.semanticpatch"}
#: Fast and quiet by default: no autorecovery or reports unless a test turns them on.
FAST = {"reload_seconds": 0.2, "autorecovery_interval_seconds": 0, "approval_delay_seconds": 0.4,
        "report_interval_seconds": 0, "rebuild_seconds": 0.2, "queue_seconds": 0}


class Client:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = requests.Session()

    def get(self, path: str, **kw) -> requests.Response:
        return self.http.get(self.base + path, timeout=5, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.http.post(self.base + path, timeout=5, **kw)

    def put(self, path: str, **kw) -> requests.Response:
        return self.http.put(self.base + path, timeout=5, **kw)

    def patch(self, path: str, **kw) -> requests.Response:
        return self.http.patch(self.base + path, timeout=5, **kw)

    def reset(self, **timing: float) -> None:
        r = self.post("/_sandbox/reset", json={"timing": {**FAST, **timing}})
        assert r.status_code == 200 and r.json()["ok"] is True, r.text

    def faults(self, *names: str) -> requests.Response:
        return self.post("/_sandbox/faults", json={"faults": list(names)})

    def state(self) -> dict:
        r = self.get("/_sandbox/state")
        assert r.status_code == 200
        return r.json()

    def flag(self) -> dict:
        r = self.get(FLAG)
        assert r.status_code == 200, r.text
        return r.json()

    def instruction(self, target: str, image_map: dict) -> dict:
        flag = self.flag()
        rule = next(r for r in flag["environments"]["production"]["rules"] if r["ref"] == target)
        variation = next(v for v in flag["variations"] if v["value"] == image_map)
        return {"kind": "updateRuleVariationOrRollout", "ruleId": rule["_id"], "variationId": variation["_id"]}

    def promote(self, target: str, image_map: dict = NEW_MAP) -> requests.Response:
        body = {"environmentKey": "production", "comment": f"promote {target}",
                "instructions": [self.instruction(target, image_map)]}
        return self.patch(FLAG, json=body, headers=SEMANTIC)

    def train(self, target: str, **config: object) -> requests.Response:
        integration = {
            "acceptanceTests": {"link": "https://ghe/evidence", "hashValue": "a" * 40, "hashType": "Git Commit"},
            "buildSecurityTests": {"link": "https://ghe/evidence", "hashValue": "a" * 40, "hashType": "Git Commit"},
            "securityOnly": True, "securityImpact": "https://ghe/concept-doc",
            "details": f"Promoting immutable image build {NEW_BUILD}-prod", "backoutPlan": "Rollback to previous version",
            "previousDeployment": None, "target": target, "build": NEW_BUILD, **config,
        }
        body = {"description": f"Promote {NEW_BUILD} to {target}", "instructions": [self.instruction(target, NEW_MAP)],
                "notifyMemberIds": [], "integrationConfig": integration}
        return self.post(APPROVALS, json=body)

    def crumb(self) -> dict:
        """Jenkins' CSRF crumb for this client's session (the cookie stays in `self.http`)."""
        r = self.get("/jenkins/crumbIssuer/api/json")
        assert r.status_code == 200, r.text
        body = r.json()
        return {body["crumbRequestField"]: body["crumb"]}

    def jenkins_post(self, path: str, **kw) -> requests.Response:
        return self.post(path, headers=self.crumb(), **kw)

    def build_with_parameters(self, **params: str) -> requests.Response:
        return self.jenkins_post(f"{IMAGE_JOB}/buildWithParameters", params=params or {"BUILD_NAME": NEW_BUILD})

    def queued_build(self, response: requests.Response) -> int:
        """The build number a queue item (Location of a 201) gets once it leaves the queue."""
        assert response.status_code == 201, response.text
        queue_path = response.headers["Location"].removeprefix(self.base) + "api/json"
        item = wait_for(lambda: (i := self.get(queue_path).json()).get("executable") and i)
        return item["executable"]["number"]

    def reloads(self, **params: str) -> list[dict]:
        r = self.get(RELOADS, params=params)
        assert r.status_code == 200, r.text
        return r.json()["reloads"]


def wait_for(check, timeout: float = 5.0, interval: float = 0.05):
    """Poll until `check()` returns something truthy; the sandbox's clock is real time."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture(scope="module")
def base_url():
    server, base = serve_in_thread(0)
    yield base
    server.stop()


@pytest.fixture
def c(base_url) -> Client:
    client = Client(base_url)
    client.reset()
    return client


# ---------------------------------------------------------------------------- seed


def test_seed_state_matches_contract(c):
    state = c.state()
    assert state["images"] == {"previous": PREVIOUS_MAP, "new": NEW_MAP}
    assert state["builds"] == {"previous": PREVIOUS_BUILD, "new": NEW_BUILD}
    assert list(state["flag"]["rules"]) == TARGETS
    assert all(m == PREVIOUS_MAP for m in state["flag"]["rules"].values())
    assert state["promotions"] == [] and state["reloads"] == [] and state["slack"] == []
    assert state["incidents"] == [] and state["approval_requests"] == [] and state["faults"] == []
    assert state["evidence"] == {"path": EVIDENCE, "commits": []}
    targets = {t["target"]: t for t in state["targets"]}
    assert targets["ap-south"] == {"target": "ap-south", "carriers": ["prod-syd01-carrier4", "prod-syd04-carrier2"],
                                   "image_key": "prod"}
    assert targets["stage-dal10-carrier0"]["carriers"] == ["stgiks-dal10-carrier0"]
    assert targets["eu-fr2"]["image_key"] == "prodfr2"
    assert {t["image_key"] for t in state["targets"][:4]} == {"dev"}


def test_seed_flag_shape(c):
    flag = c.flag()
    assert flag["key"] == "worker-image" and flag["kind"] == "multivariate"
    assert [v["value"] for v in flag["variations"]] == [PREVIOUS_MAP, NEW_MAP]
    env = flag["environments"]["production"]
    assert env["on"] is True and env["fallthrough"] == {"variation": 0}
    assert [r["ref"] for r in env["rules"]] == TARGETS
    rule = env["rules"][0]
    assert rule["variation"] == 0 and rule["description"] == rule["ref"]
    assert rule["clauses"][0]["attribute"] == "target" and rule["clauses"][0]["values"] == [rule["ref"]]
    assert c.get(FLAG, params={"env": "production"}).json() == flag
    # ids are stable across resets (hooks may remember them)
    c.reset()
    assert c.flag()["environments"]["production"]["rules"][0]["_id"] == rule["_id"]
    assert c.get("/launchdarkly/api/v2/flags/default/nope").status_code == 404


def test_seed_jenkins_builds(c):
    host = {"Host": "jenkins-sandbox.test:9999"}
    build = c.get(f"{IMAGE_JOB}/434/api/json", headers=host).json()
    assert build["url"] == "http://jenkins-sandbox.test:9999/jenkins/job/Conductors/job/oceanPI/job/immutable_image/434/"
    assert build["result"] == "SUCCESS" and build["building"] is False
    assert build["displayName"] == NEW_BUILD and isinstance(build["timestamp"], int)
    causes = build["actions"][0]["causes"]
    assert causes[0]["upstreamProject"] == "Conductors/Conductors-Infrastructure/SmithPackageSync-V2"
    assert causes[0]["upstreamBuild"] == 1207
    params = build["actions"][1]["parameters"]
    assert {"name": "BUILD_NAME", "value": NEW_BUILD}.items() <= params[0].items()
    assert [a["relativePath"] for a in build["artifacts"]] == ["image_ids.json"]
    assert c.get(f"{IMAGE_JOB}/434/artifact/image_ids.json").json() == NEW_MAP
    assert c.get(f"{IMAGE_JOB}/433/artifact/image_ids.json").json() == PREVIOUS_MAP
    assert c.get(f"{IMAGE_JOB}/lastSuccessfulBuild/api/json").json()["number"] == 434
    console = c.get(f"{IMAGE_JOB}/434/consoleText")
    assert console.headers["Content-Type"].startswith("text/plain")
    lines = console.text.splitlines()
    assert 24 <= len(lines) <= 120 and lines[-1] == "Finished: SUCCESS"
    assert "8935154" in console.text and "packer" in console.text.lower()
    job = c.get(f"{IMAGE_JOB}/api/json").json()
    assert job["fullName"] == "Conductors/oceanPI/immutable_image"
    assert [b["number"] for b in job["builds"]] == [434, 433] and job["nextBuildNumber"] == 435
    assert job["lastBuild"]["number"] == job["lastSuccessfulBuild"]["number"] == 434 and job["inQueue"] is False
    smith = c.get(f"{SMITH_JOB}/1207/api/json").json()
    assert smith["result"] == "SUCCESS"
    root = c.get("/jenkins/api/json").json()
    assert [j["name"] for j in root["jobs"]] == ["Conductors"]
    assert c.get("/jenkins/crumbIssuer/api/json").json()["crumbRequestField"] == "Jenkins-Crumb"
    assert c.get(f"{IMAGE_JOB}/999/api/json").status_code == 404


def test_seed_chlorine_carriers(c):
    carriers = {x["name"]: x for x in c.get("/chlorine/api/v1/carriers").json()["carriers"]}
    assert len(carriers) == 17
    for name, carrier in carriers.items():
        assert 6 <= len(carrier["workers"]) <= 10
        assert all(re.fullmatch(rf"{name}-worker-\d+", w) for w in carrier["workers"])
    assert "dev-sjc04-carrier12-worker-504" in carriers["dev-sjc04-carrier12"]["workers"]
    assert "stgiks-dal10-carrier0-worker-1038" in carriers["stgiks-dal10-carrier0"]["workers"]
    assert carriers["prod-par04-carrier1"]["region"] == "eu-fr2"
    assert carriers["prod-par04-carrier1"]["image_key"] == "prodfr2"


# ---------------------------------------------------------------------------- control


def test_reset_clears_faults_and_state(c):
    assert c.faults("slack_down", "train_rejected").json() == {"ok": True, "faults": ["slack_down", "train_rejected"]}
    assert c.promote("dev-sjc04-carrier12").status_code == 200
    c.post(RELOADS, json={"carrier": "dev-sjc04-carrier12", "reason": "test"})
    c.put(f"{CONTENTS}/{EVIDENCE}", json={"message": "m", "content": base64.b64encode(b"x").decode()})
    before = c.state()
    assert before["promotions"] and before["reloads"] and before["evidence"]["commits"] and before["faults"]
    c.reset()
    after = c.state()
    assert after["faults"] == [] and after["promotions"] == [] and after["reloads"] == []
    assert after["evidence"]["commits"] == [] and after["calls"] == {}
    assert after["flag"]["rules"]["dev-sjc04-carrier12"] == PREVIOUS_MAP
    assert c.get(f"{CONTENTS}/{EVIDENCE}").status_code == 404
    assert c.post("/slack/api/chat.postMessage", json={"channel": "#x", "text": "hi"}).json()["ok"] is True


@pytest.mark.parametrize("name", ["no_such_fault", "reload_fail:nowhere", "autorecovery_slow:mars", "reload_fail",
                                  "slack_down:now"])
def test_unknown_fault_is_rejected_by_name(c, name):
    r = c.faults("slack_down", name)
    assert r.status_code == 400
    assert name.split(":")[0] in r.json()["error"]
    assert c.state()["faults"] == []  # nothing applied when one name is bad


def test_reset_rejects_unknown_timing(c):
    r = c.post("/_sandbox/reset", json={"timing": {"reload_secs": 1}})
    assert r.status_code == 400 and "reload_secs" in r.json()["error"]


# ---------------------------------------------------------------------------- faults


def _fault_jenkins_build_failed(c):
    build = c.get(f"{IMAGE_JOB}/434/api/json").json()
    assert build["result"] == "FAILURE" and build["artifacts"] == []
    log = c.get(f"{IMAGE_JOB}/434/consoleText").text
    assert "ERROR: packer build failed" in log and log.rstrip().endswith("Finished: FAILURE")
    assert c.get(f"{IMAGE_JOB}/lastSuccessfulBuild/api/json").json()["number"] == 433
    rebuild = _rebuild(c)
    assert rebuild["result"] == "FAILURE"
    assert "ERROR:" in c.get(f"{IMAGE_JOB}/{rebuild['number']}/consoleText").text


def _rebuild(c) -> dict:
    number = c.queued_build(c.build_with_parameters(BUILD_NAME=NEW_BUILD))
    assert number == 435
    return wait_for(lambda: (b := c.get(f"{IMAGE_JOB}/{number}/api/json").json())["result"] and b)


def _fault_jenkins_build_timeout(c):
    build = c.get(f"{IMAGE_JOB}/434/api/json").json()
    assert build["result"] == "FAILURE"
    assert "Build timed out (after 120 minutes). Marking the build as failed." in \
        c.get(f"{IMAGE_JOB}/434/consoleText").text
    number = c.queued_build(c.build_with_parameters(BUILD_NAME=NEW_BUILD))
    running = c.get(f"{IMAGE_JOB}/{number}/api/json").json()
    assert running["building"] is True and running["result"] is None
    done = wait_for(lambda: (b := c.get(f"{IMAGE_JOB}/{number}/api/json").json())["result"] and b)
    assert done["result"] == "SUCCESS" and done["displayName"] == NEW_BUILD
    assert c.get(f"{IMAGE_JOB}/{number}/artifact/image_ids.json").json() == NEW_MAP
    assert c.get(f"{IMAGE_JOB}/{number}/consoleText").text.rstrip().endswith("Finished: SUCCESS")
    causes = done["actions"][0]["causes"]
    assert causes[0]["upstreamBuild"] == 1207 and causes[-1]["_class"].endswith("UserIdCause")
    job = c.get(f"{IMAGE_JOB}/api/json").json()
    assert job["lastSuccessfulBuild"]["number"] == number and job["lastFailedBuild"]["number"] == 434


def _transient(c, path: str, status: int, system_method: str):
    assert [c.get(path).status_code for _ in range(4)] == [status] * 3 + [200]
    state = c.state()
    assert state["faulted_calls"][system_method] == 3 and state["calls"][system_method] == 1
    assert state["faults"] == []


def _fault_jenkins_5xx(c):
    _transient(c, f"{IMAGE_JOB}/434/api/json", 503, "jenkins GET")


def _fault_flags_5xx(c):
    _transient(c, FLAG, 503, "flags GET")


def _fault_github_5xx(c):
    _transient(c, f"{CONTENTS}/README.md", 502, "github GET")


def _fault_flags_conflict(c):
    assert c.get(FLAG).status_code == 200  # reads are not writes
    first, second = c.promote("dev-south"), c.promote("dev-south")
    assert (first.status_code, second.status_code) == (409, 409) and first.json()["code"] == "conflict"
    assert c.state()["flag"]["rules"]["dev-south"] == PREVIOUS_MAP
    assert c.promote("dev-south").status_code == 200
    state = c.state()
    assert state["flag"]["rules"]["dev-south"] == NEW_MAP and len(state["promotions"]) == 1
    assert state["calls"]["flags PATCH"] == 1 and state["faulted_calls"]["flags PATCH"] == 2


def _fault_github_conflict(c):
    body = {"message": "Add evidence", "content": base64.b64encode(b"evidence\n").decode(), "branch": "master"}
    assert [c.put(f"{CONTENTS}/{EVIDENCE}", json=body).status_code for _ in range(2)] == [409, 409]
    assert c.get(f"{CONTENTS}/{EVIDENCE}").status_code == 404  # not applied
    assert c.put(f"{CONTENTS}/{EVIDENCE}", json=body).status_code == 201
    assert len(c.state()["evidence"]["commits"]) == 1


def _fault_reload_fail(c):
    bad = c.post(RELOADS, json={"carrier": "dev-sjc04-carrier12", "reason": "test"}).json()
    good = c.post(RELOADS, json={"carrier": "dev-dal10-carrier2", "reason": "test"}).json()
    done = wait_for(lambda: all(r["status"] != "pending" for r in c.reloads()) and c.reloads())
    status = {r["id"]: r["status"] for r in done}
    assert status == {bad["id"]: "failed", good["id"]: "succeeded"}
    assert [r["result"] for r in c.state()["reloads"]] == ["failed", "succeeded"]


def _fault_autorecovery_failed_alert(c):
    c.reset(autorecovery_interval_seconds=0.05, reload_seconds=0.05)
    assert c.faults("autorecovery_failed_alert:ap-south").status_code == 200
    time.sleep(0.4)
    incidents = "/pagerduty/incidents"
    params = {"service_ids[]": "PM2KE3Q"}
    assert c.get(incidents, params=params).json()["incidents"] == []  # old map served: no alert yet
    assert c.promote("ap-south").status_code == 200
    found = wait_for(lambda: c.get(incidents, params=params).json()["incidents"])
    assert len(found) == 1
    incident = found[0]
    assert re.fullmatch(r"autorecovery_failed: prod-syd0[14]-carrier[42] prod-syd0[14]-carrier[42]-worker-\d+ in ap-south",
                        incident["title"])
    assert incident["status"] == "triggered" and incident["service"] == {
        **incident["service"], "id": "PM2KE3Q", "summary": "armada-infra - low - prod"}
    failed = c.reloads(region="ap-south", kind="autorecovery", status="failed")
    assert len(failed) == 1 and failed[0]["worker"] in incident["title"] and failed[0]["image_id"] == "8935154"
    later = c.get(incidents, params={**params, "since": incident["created_at"][:-5] + "9Z"}).json()
    assert later["total"] is None and c.state()["incidents"][0]["region"] == "ap-south"


def _fault_autorecovery_slow(c):
    c.reset(autorecovery_interval_seconds=0.05, reload_seconds=0)
    assert c.faults("autorecovery_slow:ap-north").status_code == 200
    # Count from the fault on: on a loaded machine the fault call comes a while after the reset, and the
    # reloads before it ran at the normal rate.
    since = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    time.sleep(1.2)
    slow = len(c.reloads(region="ap-north", kind="autorecovery", since=since))
    normal = len(c.reloads(region="uk-south", kind="autorecovery", since=since))
    assert normal >= 10 and slow <= 2, (slow, normal)


def _fault_train_rejected(c):
    stage = c.train("stage-dal10-carrier0").json()
    assert stage["reviewStatus"] == "approved"  # stage trains are not affected
    prod = c.train("ap-south").json()
    assert prod["reviewStatus"] == "pending"
    decided = wait_for(lambda: (r := c.get(f"{APPROVALS}/{prod['_id']}").json())["reviewStatus"] != "pending" and r)
    assert decided["reviewStatus"] == "declined"
    assert c.post(f"{APPROVALS}/{prod['_id']}/apply", json={}).status_code == 400
    other = c.train("ap-north").json()
    reviewed = c.post(f"{APPROVALS}/{other['_id']}/reviews", json={"kind": "approve", "comment": "lgtm"}).json()
    assert reviewed["reviewStatus"] == "declined"
    assert c.state()["flag"]["rules"]["ap-south"] == PREVIOUS_MAP


def _fault_slack_down(c):
    r = c.post("/slack/api/chat.postMessage", json={"channel": "#sre-cfs-patching", "text": "hello"})
    assert r.status_code == 503
    assert c.post("/slack/api/auth.test").status_code == 503
    time.sleep(0.2)
    assert c.post("/slack/api/chat.postMessage", json={"channel": "#x", "text": "again"}).status_code == 503
    assert c.state()["slack"] == []


def _lost(call) -> None:
    """The write's answer never comes: the connection closes first."""
    with pytest.raises(requests.ConnectionError):
        call()


def _fault_flags_lost_response(c):
    assert c.get(FLAG).status_code == 200  # reads answer as usual
    _lost(lambda: c.promote("dev-south"))
    state = c.state()
    assert state["flag"]["rules"]["dev-south"] == NEW_MAP and len(state["promotions"]) == 1  # carried out
    assert state["faults"] == [] and state["faulted_calls"]["flags PATCH"] == 1
    assert c.promote("prestage-south").status_code == 200  # one use only


def _fault_github_lost_response(c):
    body = {"message": "Add evidence", "content": base64.b64encode(b"evidence\n").decode(), "branch": "master"}
    _lost(lambda: c.put(f"{CONTENTS}/{EVIDENCE}", json=body))
    got = c.get(f"{CONTENTS}/{EVIDENCE}")
    assert got.status_code == 200 and base64.b64decode(got.json()["content"]) == b"evidence\n"
    assert len(c.state()["evidence"]["commits"]) == 1
    again = c.put(f"{CONTENTS}/{EVIDENCE}", json={**body, "sha": got.json()["sha"]})
    assert again.status_code == 200


def _fault_jenkins_lost_response(c):
    headers = c.crumb()
    _lost(lambda: c.post(f"{IMAGE_JOB}/buildWithParameters", params={"BUILD_NAME": NEW_BUILD}, headers=headers))
    builds = c.state()["jenkins"]["immutable_image"]
    assert [b["number"] for b in builds] == [433, 434, 435]  # the build was queued and started
    assert c.queued_build(c.build_with_parameters(BUILD_NAME=NEW_BUILD)) == 436


def _fault_pagerduty_5xx(c):
    incidents = "/pagerduty/incidents"
    assert [c.get(incidents).status_code for _ in range(5)] == [500] * 5  # an outage, not a blip
    assert c.state()["faults"] == ["pagerduty_5xx"]
    c.http.delete(c.base + "/_sandbox/faults", timeout=5)
    assert c.get(incidents).status_code == 200


FAULT_CHECKS = {
    "flags_lost_response": _fault_flags_lost_response,
    "github_lost_response": _fault_github_lost_response,
    "jenkins_lost_response": _fault_jenkins_lost_response,
    "pagerduty_5xx": _fault_pagerduty_5xx,
    "jenkins_build_failed": _fault_jenkins_build_failed,
    "jenkins_build_timeout": _fault_jenkins_build_timeout,
    "jenkins_5xx": _fault_jenkins_5xx,
    "flags_5xx": _fault_flags_5xx,
    "flags_conflict": _fault_flags_conflict,
    "github_5xx": _fault_github_5xx,
    "github_conflict": _fault_github_conflict,
    "reload_fail:dev-sjc04-carrier12": _fault_reload_fail,
    "autorecovery_failed_alert:ap-south": _fault_autorecovery_failed_alert,
    "autorecovery_slow:ap-north": _fault_autorecovery_slow,
    "train_rejected": _fault_train_rejected,
    "slack_down": _fault_slack_down,
}


@pytest.mark.parametrize("fault", list(FAULT_CHECKS))
def test_fault_has_observable_effect(c, fault):
    if not fault.startswith("autorecovery_"):  # those reset with their own timing first
        r = c.faults(fault)
        assert r.status_code == 200 and fault in c.get("/_sandbox/state").json()["faults_applied"]
    FAULT_CHECKS[fault](c)


def test_every_contract_fault_is_tested():
    names = {f.split(":")[0] for f in FAULT_CHECKS}
    assert names == {
        "jenkins_build_failed", "jenkins_build_timeout", "jenkins_5xx", "flags_5xx", "flags_conflict", "github_5xx",
        "github_conflict", "reload_fail", "autorecovery_failed_alert", "autorecovery_slow", "train_rejected",
        "slack_down", "flags_lost_response", "github_lost_response", "jenkins_lost_response", "pagerduty_5xx",
    }


# ---------------------------------------------------------------------------- flags


def test_semantic_patch_changes_rule_and_records_promotion(c):
    r = c.promote("dev-sjc04-carrier12")
    assert r.status_code == 200
    flag = r.json()
    rule = next(x for x in flag["environments"]["production"]["rules"] if x["ref"] == "dev-sjc04-carrier12")
    assert flag["variations"][rule["variation"]]["value"] == NEW_MAP
    state = c.state()
    assert state["flag"]["rules"]["dev-sjc04-carrier12"] == NEW_MAP
    assert state["flag"]["rules"]["dev-south"] == PREVIOUS_MAP
    (promotion,) = state["promotions"]
    assert promotion["target"] == "dev-sjc04-carrier12"
    assert (promotion["build"], promotion["from_build"]) == (NEW_BUILD, PREVIOUS_BUILD)
    assert promotion["change_request"] is None and promotion["approval"] is None and promotion["evidence_sha"] is None
    assert promotion["time"].endswith("Z")
    # A no-op write is not a promotion, but it is a call.
    assert c.promote("dev-sjc04-carrier12").status_code == 200
    state = c.state()
    assert len(state["promotions"]) == 1 and state["calls"]["flags PATCH"] == 2
    # Rollback is a promotion back to the previous build.
    c.promote("dev-sjc04-carrier12", PREVIOUS_MAP)
    assert [p["build"] for p in c.state()["promotions"]] == [NEW_BUILD, PREVIOUS_BUILD]


def test_semantic_patch_rejects_bad_input(c):
    bad_rule = {"environmentKey": "production", "instructions": [
        {"kind": "updateRuleVariationOrRollout", "ruleId": "nope", "variationId": "x"}]}
    r = c.patch(FLAG, json=bad_rule, headers=SEMANTIC)
    assert r.status_code == 400 and r.json()["code"] == "invalid_request" and "nope" in r.json()["message"]
    good = {"environmentKey": "production", "instructions": [c.instruction("dev-south", NEW_MAP)]}
    assert c.patch(FLAG, json=good).status_code == 400  # plain JSON is not a semantic patch
    assert c.patch(FLAG, json={**good, "environmentKey": "test"}, headers=SEMANTIC).status_code == 400
    assert c.state()["promotions"] == []


def test_add_variation_then_promote(c):
    other = {"dev": "9000001", "prod": "9000002", "prodfr2": "9000003", "stage": "9000004"}
    body = {"environmentKey": "production", "instructions": [{"kind": "addVariation", "value": other, "name": "x"}]}
    assert c.patch(FLAG, json=body, headers=SEMANTIC).status_code == 200
    assert c.patch(FLAG, json=body, headers=SEMANTIC).status_code == 400  # values are unique
    assert c.promote("dev-south", other).status_code == 200
    assert c.state()["promotions"][0]["build"] == "x"


# ---------------------------------------------------------------------------- approval requests


def test_stage_train_is_auto_approved_and_applied_once(c):
    r = c.train("stage-dal10-carrier0", acceptanceTests={"link": "l", "hashValue": "b" * 40, "hashType": "Git Commit"})
    assert r.status_code == 201
    request = r.json()
    assert request["reviewStatus"] == "approved" and request["status"] == "pending"
    assert "appliedDate" not in request and "integrationConfig" not in request
    assert c.state()["approval_requests"][0]["integrationConfig"]["target"] == "stage-dal10-carrier0"
    assert isinstance(request["creationDate"], int) and request["allReviews"][0]["kind"] == "approve"
    applied = c.post(f"{APPROVALS}/{request['_id']}/apply", json={"comment": "go"})
    assert applied.status_code == 200
    assert applied.json()["status"] == "completed" and isinstance(applied.json()["appliedDate"], int)
    again = c.post(f"{APPROVALS}/{request['_id']}/apply", json={"comment": "go"})
    assert again.status_code == 400 and "already applied" in again.json()["message"]
    state = c.state()
    (promotion,) = state["promotions"]
    assert promotion["target"] == "stage-dal10-carrier0" and promotion["evidence_sha"] == "b" * 40
    assert promotion["request_id"] == request["_id"] and promotion["approval"] == "approved"
    assert promotion["change_request"]["backoutPlan"] == "Rollback to previous version"
    assert state["flag"]["rules"]["stage-dal10-carrier0"] == NEW_MAP
    listed = c.get(APPROVALS).json()["items"]
    assert [x["_id"] for x in listed] == [request["_id"]] and listed[0]["status"] == "completed"


def test_prod_train_approved_by_review(c):
    c.reset(approval_delay_seconds=60)
    request = c.train("ap-south").json()
    assert request["reviewStatus"] == "pending"
    early = c.post(f"{APPROVALS}/{request['_id']}/apply", json={})
    assert early.status_code == 400 and c.state()["promotions"] == []
    reviewed = c.post(f"{APPROVALS}/{request['_id']}/reviews", json={"kind": "approve", "comment": "ok"})
    assert reviewed.status_code == 200 and reviewed.json()["reviewStatus"] == "approved"
    assert c.post(f"{APPROVALS}/{request['_id']}/apply", json={}).status_code == 200
    assert c.state()["flag"]["rules"]["ap-south"] == NEW_MAP


def test_prod_train_approved_after_delay(c):
    request = c.train("ap-south").json()
    assert request["reviewStatus"] == "pending"
    done = wait_for(lambda: (r := c.get(f"{APPROVALS}/{request['_id']}").json())["reviewStatus"] != "pending" and r)
    assert done["reviewStatus"] == "approved" and done["status"] == "pending"
    assert c.state()["flag"]["rules"]["ap-south"] == PREVIOUS_MAP  # approval alone promotes nothing


def test_approval_request_errors(c):
    assert c.get(f"{APPROVALS}/0123456789abcdef01234567").status_code == 404
    bad = {"description": "x", "instructions": [{"kind": "updateRuleVariationOrRollout", "ruleId": "?",
                                                  "variationId": "?"}]}
    assert c.post(APPROVALS, json=bad).status_code == 400
    wrong_env = APPROVALS.replace("/production/", "/staging/")
    assert c.get(wrong_env).status_code == 404


# ---------------------------------------------------------------------------- github


def _blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_github_contents_and_sha_rules(c):
    url = f"{CONTENTS}/{EVIDENCE}"
    first = b"### Evidence\n"
    put = lambda body: c.put(url, json={"message": "evidence", "branch": "master", **body})  # noqa: E731
    assert put({"content": base64.b64encode(first).decode(), "sha": "0" * 40}).status_code == 422
    created = put({"content": base64.b64encode(first).decode()})
    assert created.status_code == 201
    commit1 = created.json()["commit"]["sha"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit1) and created.json()["content"]["sha"] == _blob_sha(first)
    got = c.get(url, params={"ref": "master"}).json()
    assert got["sha"] == _blob_sha(first) and got["encoding"] == "base64"
    assert all(len(line) <= 60 for line in got["content"].splitlines())
    assert base64.b64decode(got["content"]) == first
    second = first + b"### stage reloads\n"
    missing = put({"content": base64.b64encode(second).decode()})
    wrong = put({"content": base64.b64encode(second).decode(), "sha": "f" * 40})
    assert (missing.status_code, wrong.status_code) == (422, 409)
    updated = put({"content": base64.b64encode(second).decode(), "sha": got["sha"]})
    assert updated.status_code == 200
    commit2 = updated.json()["commit"]["sha"]
    commits = c.get("/github/api/v3/repos/alchemy-conductors/team/commits",
                    params={"path": EVIDENCE, "sha": "master", "per_page": 5}).json()
    assert [x["sha"] for x in commits] == [commit2, commit1]
    assert commits[0]["commit"]["message"] == "evidence" and commits[0]["commit"]["committer"]["date"].endswith("Z")
    # The file as it was at the first commit, through the API and the html link.
    assert base64.b64decode(c.get(url, params={"ref": commit1}).json()["content"]) == first
    assert c.get(f"/github/alchemy-conductors/team/blob/{commit1}/{EVIDENCE}").text == first.decode()
    evidence = c.state()["evidence"]
    assert evidence["path"] == EVIDENCE
    assert [(x["sha"], x["content"]) for x in evidence["commits"]] == [(commit1, first.decode()),
                                                                     (commit2, second.decode())]
    listing = c.get(f"{CONTENTS}/train_evidence/smith-immutable-image").json()
    assert sorted(x["name"] for x in listing) == [f"immutableimage_{PREVIOUS_BUILD}_evidence.md",
                                                 f"immutableimage_{NEW_BUILD}_evidence.md"]
    assert c.get(f"{CONTENTS}/no/such/file.md").json() == {**c.get(f"{CONTENTS}/no/such/file.md").json(),
                                                          "message": "Not Found"}


# ---------------------------------------------------------------------------- chlorine


def test_requested_reload_boots_the_image_the_rule_serves(c):
    before = c.post(RELOADS, json={"carrier": "dev-sjc04-carrier12", "reason": "pre"}).json()
    assert before["status"] == "pending" and re.fullmatch(r"CHG\d{7}", before["change_id"])
    assert before["kind"] == "requested" and before["worker"].startswith("dev-sjc04-carrier12-worker-")
    busy = c.post(RELOADS, json={"carrier": "dev-sjc04-carrier12", "worker": before["worker"]})
    assert busy.status_code == 409  # a worker is reloaded once at a time
    c.promote("dev-sjc04-carrier12")
    worker = next(w for w in ("dev-sjc04-carrier12-worker-504", "dev-sjc04-carrier12-worker-8003")
                  if w != before["worker"])
    named = c.post(RELOADS, json={"carrier": "dev-sjc04-carrier12", "worker": worker, "reason": "acceptance"})
    assert named.status_code == 202 and named.json()["worker"] == worker
    third = c.post(RELOADS, json={"carrier": "dev-sjc04-carrier12", "reason": "acceptance"}).json()
    assert len({before["worker"], named.json()["worker"], third["worker"]}) == 3
    done = wait_for(lambda: (rs := c.reloads(carrier="dev-sjc04-carrier12", kind="requested"))
                    and all(r["status"] == "succeeded" for r in rs) and rs)
    assert [r["image_id"] for r in done] == ["8495980", "8935101", "8935101"]
    assert all(r["finished_at"] and r["region"] == "dev-sjc04-carrier12" for r in done)
    since = c.reloads(since=done[1]["requested_at"])
    assert [r["id"] for r in since] == [done[1]["id"], done[2]["id"]]
    assert c.get(f"{RELOADS}/{third['id']}").json() == done[2]
    assert c.post(RELOADS, json={"carrier": "nowhere"}).status_code == 404
    assert c.post(RELOADS, json={"carrier": "dev-dal10-carrier2", "worker": worker}).status_code == 400
    state_reloads = c.state()["reloads"]
    assert {"carrier", "worker", "change_id", "image_id", "result", "kind", "time"} <= set(state_reloads[0])


def test_autorecovery_events_accumulate(c):
    c.reset(autorecovery_interval_seconds=0.05, reload_seconds=0.05)
    c.promote("ap-south")
    # The promotion is stamped in milliseconds, and the request that promoted may have started an
    # autorecovery reload (old image) in that same millisecond: count from the next one.
    promoted = datetime.fromisoformat(c.state()["promotions"][0]["time"].replace("Z", "+00:00"))
    promoted_at = (promoted + timedelta(milliseconds=1)).isoformat().replace("+00:00", "Z")
    time.sleep(0.8)
    first = c.reloads(region="ap-south", kind="autorecovery", since=promoted_at)
    time.sleep(0.4)
    second = c.reloads(region="ap-south", kind="autorecovery", since=promoted_at)
    assert len(second) > len(first) >= 10
    assert {r["carrier"] for r in second} == {"prod-syd01-carrier4", "prod-syd04-carrier2"}
    assert {r["image_id"] for r in second if r["status"] == "succeeded"} == {"8935154"}
    assert all(r["kind"] == "autorecovery" and r["region"] == "ap-south" for r in second)
    fr2 = c.reloads(region="eu-fr2", kind="autorecovery")
    assert fr2 and {r["image_id"] for r in fr2} == {"8496850"}
    assert c.reloads(kind="requested") == []
    assert c.get("/_sandbox/state", params={"autorecovery": "0"}).json()["reloads"] == []


# ---------------------------------------------------------------------------- reports


def _counts(text: str) -> dict[str, int]:
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"^ *(\d+) (?:imageid:)?(\d+)$", text, re.M)}


def _per_carrier(text: str) -> dict[str, dict[str, int]]:
    blocks = re.split(r"^# CARRIER: (\S+)\n", text, flags=re.M)[1:]
    return {blocks[i]: _counts(blocks[i + 1]) for i in range(0, len(blocks), 2)}


def test_report_artifacts_format_and_rollout_growth(c):
    last = c.get(f"{REPORT_JOB}/lastSuccessfulBuild/api/json").json()
    assert sorted(a["relativePath"] for a in last["artifacts"]) == ["prod-531277-counts-per-carrier.log",
                                                                    "prod-531277-counts.log"]
    account = c.get(f"{REPORT_JOB}/lastSuccessfulBuild/artifact/prod-531277-counts.log").text
    lines = account.splitlines()
    assert lines[:3] == ["# -----------------------------", "# Image counts for this account",
                         "# -----------------------------"]
    assert all(re.fullmatch(r"[ \d]{7} \d+", line) for line in lines[3:])
    per = c.get(f"{REPORT_JOB}/lastSuccessfulBuild/artifact/prod-531277-counts-per-carrier.log").text
    assert all(re.fullmatch(r"# CARRIER: \S+|[ \d]{7} imageid:\d+", line) for line in per.splitlines())
    carriers = _per_carrier(per)
    assert len(carriers) == 11 and all(sum(v.values()) == 200 for v in carriers.values())
    assert sum(_counts(account).values()) == 11 * 200
    assert "8496850" in carriers["prod-par04-carrier1"] and "8935154" not in _counts(account)

    c.promote("ap-south")
    shares = []
    for _ in range(5):  # a build of the report job publishes a report now
        r = c.jenkins_post(f"{REPORT_JOB}/build")
        assert r.status_code == 201
        text = c.get(f"{REPORT_JOB}/lastBuild/artifact/prod-531277-counts-per-carrier.log").text
        shares.append(_per_carrier(text)["prod-syd01-carrier4"].get("8935154", 0))
    assert shares == [50, 100, 150, 200, 200]
    untouched = _per_carrier(c.get(f"{REPORT_JOB}/lastBuild/artifact/prod-531277-counts-per-carrier.log").text)
    assert "8935154" not in untouched["prod-tok02-carrier1"]
    assert _counts(c.get(f"{REPORT_JOB}/lastBuild/artifact/prod-531277-counts.log").text)["8935154"] == 400


def test_reports_are_published_on_a_timer(c):
    c.reset(report_interval_seconds=0.2)
    first = c.get(f"{REPORT_JOB}/lastBuild/api/json").json()["number"]
    wait_for(lambda: c.get(f"{REPORT_JOB}/lastBuild/api/json").json()["number"] >= first + 2)


# ---------------------------------------------------------------------------- slack, pagerduty, server


def test_slack_messages_are_recorded(c):
    r = c.post("/slack/api/chat.postMessage", json={"channel": "#sre-cfs-patching", "text": "ap-south *failed*"},
               headers={"Authorization": "Bearer xoxb-secret"})
    body = r.json()
    assert r.status_code == 200 and body["ok"] is True and re.fullmatch(r"C[0-9A-Z]{10}", body["channel"])
    assert body["ts"] and body["message"]["text"] == "ap-south *failed*"
    form = c.post("/slack/api/chat.postMessage", data={"channel": "C123", "text": "form"}).json()
    assert form["ok"] is True and form["channel"] == "C123"
    again = c.post("/slack/api/chat.postMessage", json={"channel": "#sre-cfs-patching", "text": "x"}).json()
    assert again["channel"] == body["channel"]  # one id per channel
    assert c.post("/slack/api/chat.postMessage", json={"text": "no channel"}).json()["ok"] is False
    assert [(m["channel"], m["text"]) for m in c.state()["slack"]] == [("#sre-cfs-patching", "ap-south *failed*"),
                                                                       ("C123", "form"), ("#sre-cfs-patching", "x")]
    assert c.state()["slack"][0]["channel_id"] == body["channel"]
    assert c.post("/slack/api/auth.test").json()["ok"] is True


def test_slack_click_refusals_and_response_url(c, monkeypatch):
    """A click needs a message with that button, a Slack user id and somewhere to go; its response_url answers."""
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "go?"}},
              {"type": "actions", "elements": [{"type": "button", "action_id": "yes", "value": "v",
                                                 "text": {"type": "plain_text", "text": "Yes"}}]}]
    plain = c.post("/slack/api/chat.postMessage", json={"channel": "#p", "text": "no buttons"}).json()
    sent = c.post("/slack/api/chat.postMessage", data={"channel": "#p", "text": "go?",
                                                       "blocks": json.dumps(blocks)}).json()
    assert sent["ok"] is True and sent["message"]["blocks"] == blocks  # form body: blocks as JSON text

    def click(**body):
        return c.post("/_sandbox/slack/click", json=body)

    assert click(ts="1.0", action="yes", user="U0A").status_code == 404
    assert "no button" in click(ts=plain["ts"], action="yes", user="U0AB", url="http://x").json()["error"]
    assert "Slack user id" in click(ts=sent["ts"], action="yes", user="bob", url="http://x").json()["error"]
    assert "unknown click field" in click(ts=sent["ts"], action="yes", user="U0AB", why=1).json()["error"]
    monkeypatch.delenv("SANDBOX_SLACK_INTERACTION_URL", raising=False)
    assert "no interaction URL" in click(ts=sent["ts"], action="Yes", user="U0AB").json()["error"]
    # an app that is not listening: the sandbox says so (502), and its response_url still works
    r = click(ts=sent["ts"], action="Yes", user="U0AB", url="http://127.0.0.1:9/interactions")
    assert r.status_code == 502 and "could not deliver" in r.json()["error"]
    payload = json.loads(urllib.parse.parse_qs(r.json()["request"]["body"])["payload"][0])
    path = urllib.parse.urlsplit(payload["response_url"]).path
    assert c.post(path, json={"response_type": "ephemeral", "text": "not you"}).json() == {"ok": True}
    assert c.post(path, json={"replace_original": True, "text": "decided"}).json()["ok"] is True
    messages = c.state()["slack"]
    assert [m["text"] for m in messages] == ["no buttons", "decided", "not you"]
    assert messages[2]["ephemeral"] is True and messages[2]["user"] == "U0AB"
    c.reset()
    assert c.post(path, json={"text": "late"}).status_code == 404  # a reset forgets the response URLs


def test_pagerduty_lists_nothing_when_healthy(c):
    r = c.get("/pagerduty/incidents", params={"service_ids[]": "PM2KE3Q", "since": "2020-01-01T00:00:00Z",
                                              "until": "2100-01-01T00:00:00Z", "limit": 25, "offset": 0})
    # PagerDuty counts only when asked: `total` is null unless total=true.
    assert r.json() == {"incidents": [], "limit": 25, "offset": 0, "more": False, "total": None}
    counted = c.get("/pagerduty/incidents", params={"service_ids[]": "PM2KE3Q", "total": "true"})
    assert counted.json()["total"] == 0


def test_log_lines_carry_no_credentials(c, caplog):
    with caplog.at_level(logging.INFO, logger="sandbox"):
        c.get(FLAG, headers={"Authorization": "api-secret-token-1"})
        c.post("/slack/api/auth.test", headers={"Authorization": "Bearer xoxb-secret-2"})
        c.get(f"{IMAGE_JOB}/api/json", params={"token": "secret-3"}, auth=("user", "secret-4"))
        time.sleep(0.1)
    text = caplog.text
    assert "/launchdarkly/api/v2/flags/default/worker-image" in text and " 200 " in text
    for secret in ("api-secret-token-1", "xoxb-secret-2", "secret-3", "secret-4", "dXNlcjpzZWNyZXQtNA"):
        assert secret not in text


def test_parallel_writes_are_serialised(c):
    errors = []

    def reload(carrier: str) -> None:
        r = c.http.post(c.base + RELOADS, json={"carrier": carrier, "reason": "parallel"}, timeout=5)
        if r.status_code != 202:
            errors.append(r.text)

    threads = [threading.Thread(target=reload, args=(f"prod-{dc}",)) for dc in
               ["syd01-carrier4", "syd04-carrier2", "tok02-carrier1", "fra02-carrier3", "lon04-carrier1"] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    reloads = c.reloads()
    assert len(reloads) == 15 and len({r["id"] for r in reloads}) == 15 and len({r["change_id"] for r in reloads}) == 15
    per_carrier = {}
    for r in reloads:
        per_carrier.setdefault(r["carrier"], set()).add(r["worker"])
    assert all(len(workers) == 3 for workers in per_carrier.values())  # no worker reloaded twice at once
    assert c.state()["calls"]["chlorine POST"] == 15


def test_unknown_paths(c):
    assert c.get("/nothing-here").status_code == 404
    assert c.get("/_sandbox/health").json()["ok"] is True
    assert c.get("/chlorine/api/v1/nope").status_code == 404


def test_runbook_walkthrough_leaves_a_complete_state(c):
    """The whole procedure by hand, as the DAG will drive it; the state must tell the story afterwards."""
    c.reset(reload_seconds=0.05, autorecovery_interval_seconds=0.05, approval_delay_seconds=0.1)

    def reloads_ok(carrier: str, n: int = 3) -> list[str]:
        ids = [c.post(RELOADS, json={"carrier": carrier, "reason": "acceptance"}).json()["id"] for _ in range(n)]
        done = wait_for(lambda: (rs := [r for r in c.reloads(kind="requested") if r["id"] in ids])
                        and all(r["status"] == "succeeded" for r in rs) and rs)
        return [f"- {r['change_id']}: {r['worker']}" for r in done]

    def put_evidence(text: str, sha: str | None) -> str:
        body = {"message": "evidence", "content": base64.b64encode(text.encode()).decode(), "branch": "master"}
        r = c.put(f"{CONTENTS}/{EVIDENCE}", json={**body, **({"sha": sha} if sha else {})})
        assert r.status_code in (200, 201), r.text
        return r.json()

    def train(target: str, evidence_sha: str, previous: str | None = None) -> dict:
        request = c.train(target, previousDeployment=previous,
                          acceptanceTests={"link": "l", "hashValue": evidence_sha, "hashType": "Git Commit"}).json()
        wait_for(lambda: c.get(f"{APPROVALS}/{request['_id']}").json()["reviewStatus"] == "approved")
        assert c.post(f"{APPROVALS}/{request['_id']}/apply", json={"comment": "start"}).status_code == 200
        return request

    c.promote("dev-sjc04-carrier12")
    dev = reloads_ok("dev-sjc04-carrier12")
    c.promote("dev-south")
    c.promote("prestage-mon01-carrier1")
    prestage = reloads_ok("prestage-mon01-carrier1")
    c.promote("prestage-south")
    first = put_evidence("\n".join(["dev:", *dev, "prestage:", *prestage]), None)
    train("stage-dal10-carrier0", first["commit"]["sha"])
    stage = reloads_ok("stgiks-dal10-carrier0")
    second = put_evidence("\n".join(["dev:", *dev, "prestage:", *prestage, "stage:", *stage]),
                          first["content"]["sha"])
    stage_south = train("stage-south", second["commit"]["sha"])
    train("ap-south", second["commit"]["sha"], previous=stage_south["_id"])
    wait_for(lambda: len(c.reloads(region="ap-south", kind="autorecovery", status="succeeded")) >= 10)
    for target in TARGETS[7:]:
        c.promote(target)

    state = c.state()
    assert all(m == NEW_MAP for m in state["flag"]["rules"].values())
    assert [p["target"] for p in state["promotions"]] == TARGETS
    by_target = {p["target"]: p for p in state["promotions"]}
    assert by_target["stage-dal10-carrier0"]["evidence_sha"] == first["commit"]["sha"]
    assert by_target["stage-south"]["evidence_sha"] == second["commit"]["sha"]
    assert by_target["ap-south"]["change_request"]["previousDeployment"] == stage_south["_id"]
    assert by_target["dev-south"]["change_request"] is None
    assert [x["sha"] for x in state["evidence"]["commits"]] == [first["commit"]["sha"], second["commit"]["sha"]]
    assert "stgiks-dal10-carrier0-worker-" in state["evidence"]["commits"][1]["content"]
    requested = [r for r in state["reloads"] if r["kind"] == "requested"]
    assert len(requested) == 9 and {r["result"] for r in requested} == {"succeeded"}
    assert state["calls"]["flags PATCH"] == 13 and state["calls"]["github PUT"] == 2
    assert state["incidents"] == [] and len(state["approval_requests"]) == 3


# ---------------------------------------------------------------------------- held to the real systems' rules

ENVIRONMENT = "/launchdarkly/api/v2/projects/default/environments/production"
REQUIRED = {"required": True, "canReviewOwnRequest": False, "minNumApprovals": 1}


def reset_with(c: Client, body: dict, **timing: float) -> None:
    r = c.post("/_sandbox/reset", json={"timing": {**FAST, **timing}, **body})
    assert r.status_code == 200, r.text


def test_environment_serves_approval_settings_and_reset_sets_them(c):
    env = c.get(ENVIRONMENT).json()
    assert env["key"] == "production" and env["approvalSettings"]["required"] is False
    assert env["approvalSettings"]["serviceKind"] == "launchdarkly"
    reset_with(c, {"launchdarkly": {"approvalSettings": REQUIRED}})
    settings = c.get(ENVIRONMENT).json()["approvalSettings"]
    assert {k: settings[k] for k in REQUIRED} == REQUIRED and settings["requiredApprovalTags"] == []
    assert c.state()["launchdarkly"]["approvalSettings"]["required"] is True
    for bad in ({"launchdarkly": {"approvalSettings": {"requird": True}}},
                {"launchdarkly": {"approvalSettings": {"minNumApprovals": "1"}}},
                {"launchdarkly": {"settings": {}}}, {"jenkins": {"new_build": {"image_ids": "{}"}}}, {"other": 1}):
        r = c.post("/_sandbox/reset", json=bad)
        assert r.status_code == 400, bad
    c.reset()
    assert c.get(ENVIRONMENT).json()["approvalSettings"]["required"] is False  # a plain reset restores the default


def test_required_approvals_refuse_direct_writes_with_405(c):
    reset_with(c, {"launchdarkly": {"approvalSettings": REQUIRED}})
    r = c.promote("dev-south")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    state = c.state()
    assert state["promotions"] == [] and state["flag"]["rules"]["dev-south"] == PREVIOUS_MAP
    assert len(c.flag()["variations"]) == 2


def test_required_approvals_still_let_variations_be_added(c):
    """Variations belong to the flag, approvals to an environment: adding one needs no train."""
    reset_with(c, {"launchdarkly": {"approvalSettings": REQUIRED}})
    value = {"dev": "1", "prod": "2", "prodfr2": "3", "stage": "4"}
    added = c.patch(FLAG, headers=SEMANTIC, json={"instructions": [{"kind": "addVariation", "value": value}]})
    assert added.status_code == 200, added.text
    assert value in [v["value"] for v in c.flag()["variations"]]
    mixed = c.patch(FLAG, headers=SEMANTIC, json={"environmentKey": "production", "instructions": [
        {"kind": "addVariation", "value": {**value, "dev": "9"}}, c.instruction("dev-south", value)]})
    assert mixed.status_code == 405  # a targeting change in the same patch still needs a train
    assert c.state()["promotions"] == [] and len(c.flag()["variations"]) == 3


def test_required_approvals_board_approves_and_requester_cannot(c):
    reset_with(c, {"launchdarkly": {"approvalSettings": REQUIRED}}, approval_delay_seconds=0.3)
    stage = c.train("stage-south").json()
    assert stage["reviewStatus"] == "approved" and stage["requestorId"] == "sandbox-rollout"
    assert [(r["kind"], r["memberId"]) for r in stage["allReviews"]] == [("approve", "razee-auto-approver")]
    prod = c.train("ap-south").json()
    assert prod["reviewStatus"] == "pending"
    own = c.post(f"{APPROVALS}/{prod['_id']}/reviews", json={"kind": "approve"})
    assert own.status_code == 403 and own.json()["code"] == "forbidden"
    assert c.post(f"{APPROVALS}/{prod['_id']}/reviews", json={"kind": "decline"}).status_code == 403
    decided = wait_for(lambda: (r := c.get(f"{APPROVALS}/{prod['_id']}").json())["reviewStatus"] != "pending" and r)
    assert decided["reviewStatus"] == "approved"
    assert [(r["kind"], r["memberId"]) for r in decided["allReviews"]] == [("approve", "change-board")]
    assert all(re.fullmatch(r"[0-9a-f]{24}", r["_id"]) for r in decided["allReviews"])
    applied = c.post(f"{APPROVALS}/{prod['_id']}/apply", json={}).json()
    assert applied["status"] == "completed" and applied["appliedByMemberId"] == "sandbox-rollout"
    assert isinstance(applied["appliedDate"], int) and c.state()["flag"]["rules"]["ap-south"] == NEW_MAP


def test_min_num_approvals_is_honoured(c):
    reset_with(c, {"launchdarkly": {"approvalSettings": {**REQUIRED, "minNumApprovals": 2}}},
               approval_delay_seconds=0)
    for target in ("dev-south", "ap-south"):
        request = c.train(target).json()
        assert request["reviewStatus"] == "pending" and len(request["allReviews"]) == 1, target
        assert c.post(f"{APPROVALS}/{request['_id']}/apply", json={}).status_code == 400
    reset_with(c, {"launchdarkly": {"approvalSettings": {"minNumApprovals": 2, "canReviewOwnRequest": True}}})
    request = c.train("dev-south").json()
    assert request["reviewStatus"] == "pending"
    second = c.post(f"{APPROVALS}/{request['_id']}/reviews", json={"kind": "approve"}).json()
    assert second["reviewStatus"] == "approved"


def test_approval_requests_answer_without_integration_config(c):
    request = c.train("ap-south").json()
    assert "integrationConfig" not in request and "train" not in request and "targets" not in request
    assert set(request) >= {"_id", "_links", "_version", "allReviews", "conflicts", "creationDate", "instructions",
                            "notifyMemberIds", "reviewStatus", "serviceKind", "status"}
    listed = c.get(APPROVALS).json()
    assert "_links" in listed and all("integrationConfig" not in r for r in listed["items"])
    (kept,) = c.state()["approval_requests"]
    assert kept["integrationConfig"]["target"] == "ap-south" and kept["train"] == "prod"


def test_requester_deletes_a_pending_request(c):
    c.reset(approval_delay_seconds=60)
    request = c.train("ap-south").json()
    url = f"{APPROVALS}/{request['_id']}"
    assert c.http.delete(c.base + url, timeout=5).status_code == 204
    assert c.get(url).status_code == 404 and c.get(APPROVALS).json()["items"] == []
    assert c.http.delete(c.base + url, timeout=5).status_code == 404
    (kept,) = c.state()["approval_requests"]
    assert kept["deleted"] is True and kept["status"] == "pending"
    stage = c.train("stage-south").json()
    assert c.post(f"{APPROVALS}/{stage['_id']}/apply", json={}).status_code == 200
    refused = c.http.delete(c.base + f"{APPROVALS}/{stage['_id']}", timeout=5)
    assert refused.status_code == 400  # an applied request stays


def test_add_variation_inside_an_approval_request(c):
    reset_with(c, {"launchdarkly": {"approvalSettings": REQUIRED}}, approval_delay_seconds=0)
    fresh = {"dev": "9100001", "prod": "9100053", "prodfr2": "9100059", "stage": "9100021"}
    rule = next(r for r in c.flag()["environments"]["production"]["rules"] if r["ref"] == "dev-south")
    new_id = "c0ffee00-0000-4000-8000-000000000001"
    body = {"description": "Rollout-Key: immutable-image/x/dev-south", "instructions": [
        {"kind": "addVariation", "_id": new_id, "value": fresh, "name": "x"},
        {"kind": "updateRuleVariationOrRollout", "ruleId": rule["_id"], "variationId": new_id}]}
    request = c.post(APPROVALS, json=body)
    assert request.status_code == 201, request.text
    assert len(c.flag()["variations"]) == 2  # nothing changes before the request is applied
    applied = c.post(f"{APPROVALS}/{request.json()['_id']}/apply", json={})
    assert applied.status_code == 200, applied.text
    flag = c.flag()
    assert [v["_id"] for v in flag["variations"]][-1] == new_id
    assert c.state()["flag"]["rules"]["dev-south"] == fresh
    bad = {**body, "instructions": [body["instructions"][1]]}  # the variation now exists; an unknown id does not
    bad["instructions"][0] = {**bad["instructions"][0], "variationId": "nope"}
    assert c.post(APPROVALS, json=bad).status_code == 400


def test_flag_carries_the_fields_the_description_requires(c):
    flag = c.flag()
    assert {"_links", "_version", "archived", "creationDate", "customProperties", "experiments", "key", "kind",
            "name", "tags", "temporary", "variations"} <= set(flag)
    env = flag["environments"]["production"]
    assert {"_environmentName", "_site", "archived", "lastModified", "on", "salt", "sel", "trackEvents",
            "trackEventsFallthrough", "version"} <= set(env)
    version = env["version"]
    assert c.promote("dev-south").status_code == 200
    assert c.flag()["environments"]["production"]["version"] == version + 1


def test_jenkins_posts_need_a_crumb_of_the_same_session(c):
    no_crumb = c.post(f"{IMAGE_JOB}/buildWithParameters", params={"BUILD_NAME": NEW_BUILD})
    assert no_crumb.status_code == 403 and "crumb" in no_crumb.text
    other = Client(c.base)
    stolen = other.crumb()
    assert c.post(f"{IMAGE_JOB}/buildWithParameters", headers=stolen).status_code == 403
    assert c.state()["jenkins"]["immutable_image"][-1]["number"] == 434  # nothing was queued
    assert c.build_with_parameters(BUILD_NAME=NEW_BUILD).status_code == 201


def test_jenkins_parameterized_job_refuses_plain_build(c):
    r = c.jenkins_post(f"{IMAGE_JOB}/build")
    assert r.status_code == 400 and "Nothing is submitted" in r.text
    job = c.get(f"{IMAGE_JOB}/api/json").json()
    (prop,) = job["property"]
    assert prop["_class"] == "hudson.model.ParametersDefinitionProperty"
    assert [d["name"] for d in prop["parameterDefinitions"]] == ["BUILD_NAME"]
    assert c.jenkins_post(f"{REPORT_JOB}/buildWithParameters", params={"X": "1"}).status_code == 400


def test_jenkins_queue_item_gets_its_executable_after_a_moment(c):
    c.reset(queue_seconds=0.5)
    r = c.build_with_parameters(BUILD_NAME=NEW_BUILD)
    assert r.status_code == 201
    queue = r.headers["Location"].removeprefix(c.base) + "api/json"
    waiting = c.get(queue).json()
    assert "executable" not in waiting and waiting["_class"] == "hudson.model.Queue$WaitingItem"
    assert c.queued_build(r) == 435
    assert c.get(queue).json()["_class"] == "hudson.model.Queue$LeftItem"
    build = wait_for(lambda: (b := c.get(f"{IMAGE_JOB}/435/api/json").json())["result"] and b)
    params = next(a for a in build["actions"] if a.get("_class") == "hudson.model.ParametersAction")
    assert {p["name"]: p["value"] for p in params["parameters"]} == {"BUILD_NAME": NEW_BUILD}


def test_reset_replaces_the_new_builds_artifact_and_console(c):
    raw = '{"dev": "8935101\\n", "prod": "８９３５１５４", "prodfr2": "8935160", "stage": "8935122"}\n'
    reset_with(c, {"jenkins": {"new_build": {"image_ids_json": raw, "console": "just this\nFinished: SUCCESS\n"}}})
    assert c.get(f"{IMAGE_JOB}/434/artifact/image_ids.json").content.decode() == raw
    assert c.get(f"{IMAGE_JOB}/434/consoleText").text == "just this\nFinished: SUCCESS\n"
    assert c.get(f"{IMAGE_JOB}/433/artifact/image_ids.json").json() == PREVIOUS_MAP  # the previous build is as seeded


def test_github_large_file_is_served_through_the_blob(c):
    big = b"x" * (1024 * 1024 + 1)
    url = f"{CONTENTS}/big.txt"
    assert c.put(url, json={"message": "big", "content": base64.b64encode(big).decode()}).status_code == 201
    got = c.get(url).json()
    assert (got["content"], got["encoding"], got["size"]) == ("", "none", len(big))
    blob = c.get(got["git_url"].removeprefix(c.base)).json()
    assert blob["encoding"] == "base64" and base64.b64decode(blob["content"]) == big and blob["sha"] == got["sha"]
    assert c.get("/github/api/v3/repos/alchemy-conductors/team/git/blobs/" + "0" * 40).status_code == 404


def test_github_repository_and_user(c):
    repo = c.get("/github/api/v3/repos/alchemy-conductors/team").json()
    assert repo["full_name"] == "alchemy-conductors/team" and repo["owner"]["login"] == "alchemy-conductors"
    assert repo["default_branch"] == "master"
    assert c.get("/github/api/v3/user").json()["login"] == "conductors-bot"
