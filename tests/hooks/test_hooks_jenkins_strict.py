"""JenkinsHook against a strict Jenkins: crumb bound to the session, buildWithParameters, queue, lost answer."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from image_rollout.hooks._http import ExternalSystemError
from image_rollout.hooks.jenkins import JenkinsHook

JOB = "Conductors/oceanPI/immutable_image"
JOB_URL = "/job/Conductors/job/oceanPI/job/immutable_image"
PARAMS = {"BUILD_NAME": "533-1251-880-20211101", "DRY_RUN": "false"}


class FakeJenkins:
    """Crumbs valid only with their JSESSIONID; a parameterized job; queue items that start after a moment."""

    def __init__(self, *, queue_delay: float = 0.3) -> None:
        self.sessions: dict[str, str] = {}
        self.builds = {
            434: {
                "number": 434,
                "displayName": PARAMS["BUILD_NAME"],
                "result": "FAILURE",
                "building": False,
                "actions": [
                    {"_class": "hudson.model.CauseAction", "causes": []},
                    {
                        "_class": "hudson.model.ParametersAction",
                        "parameters": [
                            {"_class": "hudson.model.StringParameterValue", "name": k, "value": v}
                            for k, v in PARAMS.items()
                        ],
                    },
                ],
            }
        }
        self.queue: dict[int, dict] = {}
        self.queue_delay = queue_delay
        self.posts: list[tuple[str, dict]] = []
        self.lose_next_post = False

    def _json(self, status: int, value) -> tuple[int, dict, bytes]:
        return status, {"Content-Type": "application/json"}, json.dumps(value).encode()

    def respond(self, method, target, headers, body):
        url = urlsplit(target)
        path = url.path.removeprefix("/jenkins")
        cookie = headers.get("Cookie", "")
        session = cookie.split("JSESSIONID.abc=", 1)[1].split(";")[0] if "JSESSIONID.abc=" in cookie else None
        if path == "/crumbIssuer/api/json":
            session = f"s{len(self.sessions)}"
            self.sessions[session] = f"crumb-{session}"
            status, hdrs, data = self._json(
                200,
                {
                    "_class": "hudson.security.csrf.DefaultCrumbIssuer",
                    "crumb": self.sessions[session],
                    "crumbRequestField": "Jenkins-Crumb",
                },
            )
            hdrs["Set-Cookie"] = f"JSESSIONID.abc={session}; Path=/; HttpOnly"
            return status, hdrs, data
        if method == "POST":
            if session is None or headers.get("Jenkins-Crumb") != self.sessions.get(session):
                return 403, {"Content-Type": "text/html"}, b"No valid crumb was included in the request"
            params = {k: v[0] for k, v in parse_qs(url.query).items()}
            self.posts.append((path, params))
            if path == f"{JOB_URL}/build":
                return 400, {"Content-Type": "text/html"}, b"Nothing is submitted"
            if path == f"{JOB_URL}/buildWithParameters":
                number = max(self.builds) + 1
                item = 8000 + number
                self.queue[item] = {"since": time.monotonic(), "number": number, "params": params}
                if self.lose_next_post:
                    self.lose_next_post = False
                    self._start(item)
                    return None
                return 201, {"Location": f"http://jenkins.example/queue/item/{item}/"}, b""
        if path.startswith("/queue/item/") and method == "GET":
            item_id = int(path.split("/")[3])
            item = self.queue[item_id]
            executable = None
            if time.monotonic() - item["since"] >= self.queue_delay:
                self._start(item_id)
                executable = {
                    "number": item["number"],
                    "url": f"http://jenkins.example{JOB_URL}/{item['number']}/",
                }
            return self._json(200, {"id": item_id, "cancelled": False, "executable": executable})
        if path == f"{JOB_URL}/api/json":
            builds = [{"number": n} for n in sorted(self.builds, reverse=True)]
            return self._json(
                200, {"name": "immutable_image", "builds": builds, "inQueue": False, "lastBuild": builds[0]}
            )
        if path.startswith(f"{JOB_URL}/") and path.endswith("/api/json"):
            ref = path[len(JOB_URL) + 1 :].split("/")[0]
            number = max(self.builds) if ref == "lastBuild" else int(ref)
            return self._json(200, self.builds[number])
        return 404, {}, b"Not Found"

    def _start(self, item_id: int) -> None:
        item = self.queue[item_id]
        if item["number"] not in self.builds:
            self.builds[item["number"]] = {
                "number": item["number"],
                "displayName": item["params"].get("BUILD_NAME"),
                "result": None,
                "building": True,
                "actions": [
                    {
                        "_class": "hudson.model.ParametersAction",
                        "parameters": [{"name": k, "value": v} for k, v in item["params"].items()],
                    }
                ],
            }


@pytest.fixture
def fake_jenkins(stub_server, stub_connection):
    fake = FakeJenkins()
    stub_connection(
        "jenkins_strict", f"{stub_server(fake.respond)}/jenkins", login="u", password="tok-123456"
    )
    return fake, JenkinsHook(jenkins_conn_id="jenkins_strict")


def test_rebuild_uses_build_with_parameters_and_the_session_crumb(fake_jenkins):
    fake, jenkins = fake_jenkins
    number = jenkins.rebuild(JOB, 434, poll_interval=0.05, wait_timeout=5)
    assert number == 435
    assert fake.posts == [(f"{JOB_URL}/buildWithParameters", PARAMS)]
    assert fake.builds[435]["displayName"] == PARAMS["BUILD_NAME"]


def test_build_parameters_from_the_parameters_action(fake_jenkins):
    fake, jenkins = fake_jenkins
    assert jenkins.build_parameters(fake.builds[434]) == PARAMS
    assert (
        jenkins.build_parameters({"actions": [{"_class": "hudson.model.CauseAction", "causes": []}]}) is None
    )


def test_a_post_without_parameters_on_a_parameterized_job_is_a_clear_400(fake_jenkins):
    fake, jenkins = fake_jenkins
    with pytest.raises(ExternalSystemError) as info:
        jenkins.rebuild(JOB, 434, parameters={}, poll_interval=0.05)
    assert info.value.status == 400
    assert "Nothing is submitted" in str(info.value)


def test_lost_answer_to_the_rebuild_starts_one_build(fake_jenkins):
    fake, jenkins = fake_jenkins
    fake.lose_next_post = True
    assert jenkins.rebuild(JOB, 434, poll_interval=0.05, wait_timeout=5) == 435
    assert len(fake.posts) == 1, "found the build the lost POST started: no second POST"
    assert sorted(fake.builds) == [434, 435]


def test_a_post_without_the_session_cookie_is_refused_then_a_new_crumb_is_fetched(fake_jenkins):
    fake, jenkins = fake_jenkins
    jenkins._crumb_headers()  # a session exists...
    real_crumb = jenkins._crumb_headers

    calls = []

    def crumb_then_forget():
        headers = real_crumb()
        calls.append(headers)
        if len(calls) == 1:
            fake.sessions.clear()  # ...and expires before the first POST
        return headers

    jenkins._crumb_headers = crumb_then_forget
    assert jenkins.rebuild(JOB, 434, poll_interval=0.05, wait_timeout=5) == 435
    assert len(calls) == 2, "the 403 got one fresh crumb"
    assert fake.posts == [(f"{JOB_URL}/buildWithParameters", PARAMS)]
