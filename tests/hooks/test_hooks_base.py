"""The shared HTTP base: construction, retries, timeouts, errors, malformed answers, secrets."""

from __future__ import annotations

import base64
import json
import logging
import pickle
import socket
import time

import pytest
from airflow.sdk.exceptions import AirflowFailException

from image_rollout.hooks._http import ExternalSystemError, MalformedResponseError, ResponseLostError, truncate
from image_rollout.hooks.chlorine import ChlorineHook
from image_rollout.hooks.flags import FlagsHook
from image_rollout.hooks.github import GitHubEvidenceHook
from image_rollout.hooks.jenkins import JenkinsHook, job_url_path
from image_rollout.hooks.pagerduty import PagerDutyHook
from include.sandbox.connections import print_exports, sandbox_connections

HOOKS = [
    (JenkinsHook, "jenkins_conn_id", "jenkins_default"),
    (FlagsHook, "launchdarkly_conn_id", "launchdarkly_default"),
    (GitHubEvidenceHook, "github_conn_id", "github_evidence_default"),
    (ChlorineHook, "chlorine_conn_id", "chlorine_default"),
    (PagerDutyHook, "pagerduty_conn_id", "pagerduty_default"),
]


@pytest.mark.parametrize(("hook_class", "attr", "default"), HOOKS)
def test_hooks_are_constructible_without_connections(monkeypatch, hook_class, attr, default):
    for name in sandbox_connections("http://unused"):
        monkeypatch.delenv(name, raising=False)
    hook = hook_class()
    assert hook_class.conn_name_attr == attr
    assert hook_class.default_conn_name == default
    assert getattr(hook, attr) == default
    assert hook_class.conn_type and hook_class.hook_name
    with pytest.raises(TypeError):
        hook_class(default)  # keyword-only


def test_job_paths_map_to_jenkins_folders():
    assert (
        job_url_path("Conductors/oceanPI/immutable_image")
        == "/job/Conductors/job/oceanPI/job/immutable_image"
    )
    assert job_url_path("/job/Conductors/job/oceanPI/") == "/job/Conductors/job/oceanPI"
    assert job_url_path("a b/c") == "/job/a%20b/job/c"
    with pytest.raises(ValueError):
        job_url_path("")


def test_external_system_error_names_everything_and_pickles():
    error = ExternalSystemError(system="jenkins", call="GET /job/x/api/json", status=404, body="Not Found")
    assert str(error) == "jenkins GET /job/x/api/json failed: HTTP 404: Not Found"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.system, copy.call, copy.status, copy.body) == (
        "jenkins",
        "GET /job/x/api/json",
        404,
        "Not Found",
    )
    assert str(copy) == str(error)
    assert len(truncate("x" * 10_000)) < 600


def test_sandbox_connections_shape(capsys):
    conns = sandbox_connections("http://127.0.0.1:8765/")
    assert set(conns) == {
        "AIRFLOW_CONN_JENKINS_DEFAULT",
        "AIRFLOW_CONN_LAUNCHDARKLY_DEFAULT",
        "AIRFLOW_CONN_GITHUB_EVIDENCE_DEFAULT",
        "AIRFLOW_CONN_CHLORINE_DEFAULT",
        "AIRFLOW_CONN_PAGERDUTY_DEFAULT",
        "AIRFLOW_CONN_SLACK_API_DEFAULT",
    }
    jenkins = json.loads(conns["AIRFLOW_CONN_JENKINS_DEFAULT"])
    assert jenkins["host"] == "http://127.0.0.1:8765/jenkins"
    assert jenkins["password"] == "sandbox-secret-jenkins"
    slack = json.loads(conns["AIRFLOW_CONN_SLACK_API_DEFAULT"])
    assert slack["conn_type"] == "slack"
    assert slack["extra"]["base_url"] == "http://127.0.0.1:8765/slack/api/"
    print_exports("http://127.0.0.1:8765")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert all(line.startswith("export AIRFLOW_CONN_") and line.endswith("'") for line in lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_is_retried_then_raised(stub_connection, caplog, capsys):
    stub_connection("nowhere", f"http://127.0.0.1:{_free_port()}/jenkins", login="u", password="s3cret-token")
    hook = JenkinsHook(jenkins_conn_id="nowhere", retries=2, retry_wait=0.01)
    with caplog.at_level(logging.WARNING), pytest.raises(ExternalSystemError) as info:
        hook.get_job("Conductors/oceanPI/immutable_image")
    error = info.value
    assert error.system == "jenkins"
    assert error.status is None
    assert error.call == "GET /job/Conductors/job/oceanPI/job/immutable_image/api/json"
    assert "got no answer after 3 attempts" in str(error)
    assert "ConnectionError" in str(error)
    logs = caplog.text + capsys.readouterr().out  # Airflow's structlog setup may print instead
    assert logs.count("retrying in") == 2
    assert "s3cret-token" not in logs


def test_read_timeout_is_retried_for_reads(stub_server, stub_connection):
    seen = []

    def slow_then_fine(method, path, headers, body):
        seen.append(path)
        if len(seen) == 1:
            time.sleep(1.0)
        return 200, {"Content-Type": "application/json"}, b'{"carriers": []}'

    stub_connection("slow", f"{stub_server(slow_then_fine)}/chlorine")
    hook = ChlorineHook(chlorine_conn_id="slow", timeout=0.3, retries=2, retry_wait=0.01)
    assert hook.list_carriers() == []
    assert len(seen) == 2


def test_read_timeout_is_not_retried_for_posts(stub_server, stub_connection):
    seen = []

    def slow(method, path, headers, body):
        seen.append(path)
        time.sleep(1.0)
        return 202, {"Content-Type": "application/json"}, b"{}"

    stub_connection("slowpost", f"{stub_server(slow)}/chlorine")
    hook = ChlorineHook(chlorine_conn_id="slowpost", timeout=0.3, retries=3, retry_wait=0.01)
    with pytest.raises(ExternalSystemError) as info:
        hook.request_reload("dev-sjc04-carrier12")
    assert "ReadTimeout" in str(info.value)
    assert len(seen) == 1, "a POST that may have been applied must not be sent again"


def test_a_post_whose_answer_is_lost_is_not_sent_again(stub_server, stub_connection):
    seen = []

    def lost(method, path, headers, body):
        seen.append(method)
        return None  # carried out, then the connection closes without an answer

    stub_connection("lostpost", f"{stub_server(lost)}/chlorine")
    hook = ChlorineHook(chlorine_conn_id="lostpost", retries=3, retry_wait=0.01)
    with pytest.raises(ResponseLostError) as info:
        hook.request_reload("dev-sjc04-carrier12")
    assert info.value.status is None
    assert "may or may not have been applied" in str(info.value)
    assert seen == ["POST"], "the write may have landed: the hook must look before writing again"


def test_a_post_that_never_reached_the_server_is_retried(stub_connection):
    stub_connection("refused", f"http://127.0.0.1:{_free_port()}/chlorine")
    hook = ChlorineHook(chlorine_conn_id="refused", retries=2, retry_wait=0.01)
    with pytest.raises(ExternalSystemError) as info:
        hook.request_reload("dev-sjc04-carrier12")
    assert not isinstance(info.value, ResponseLostError)
    assert "got no answer after 3 attempts" in str(info.value)


def test_malformed_response_names_system_and_call(stub_server, stub_connection):
    base = stub_server(lambda *_: (200, {"Content-Type": "text/html"}, b"<html>login page</html>"))
    stub_connection("junk", f"{base}/launchdarkly", password="sandbox-secret-launchdarkly")
    with pytest.raises(ExternalSystemError) as info:
        FlagsHook(launchdarkly_conn_id="junk").get_flag()
    error = info.value
    assert error.system == "launchdarkly"
    assert error.call == "GET /api/v2/flags/default/worker-image"
    assert "malformed response" in str(error)
    assert error.status == 200
    assert isinstance(error, MalformedResponseError)
    assert isinstance(error, AirflowFailException), "permanent: the task fails without retrying"


def test_wrong_json_shape_is_malformed(stub_server, stub_connection):
    base = stub_server(lambda *_: (200, {"Content-Type": "application/json"}, b'{"reloads": "nope"}'))
    stub_connection("shape", f"{base}/chlorine")
    with pytest.raises(
        ExternalSystemError, match=r"chlorine GET /api/v1/reloads returned a malformed response"
    ):
        ChlorineHook(chlorine_conn_id="shape").list_reloads()


def test_malformed_error_survives_pickling():
    error = MalformedResponseError(
        system="jenkins", call="GET /x", status=200, reason="returned a malformed response"
    )
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is MalformedResponseError
    assert (again.system, again.call, again.status) == ("jenkins", "GET /x", 200)
    assert isinstance(again, AirflowFailException)


@pytest.mark.parametrize(
    ("hook_factory", "call", "header"),
    [
        (lambda: FlagsHook(launchdarkly_conn_id="echo"), lambda h: h.get_flag(), "tok-123456789"),
        (
            lambda: GitHubEvidenceHook(github_conn_id="echo"),
            lambda h: h.get_file("x.md"),
            "token tok-123456789",
        ),
        (
            lambda: PagerDutyHook(pagerduty_conn_id="echo"),
            lambda h: h.list_incidents("2026-01-01T00:00:00Z"),
            "Token token=tok-123456789",
        ),
        (lambda: ChlorineHook(chlorine_conn_id="echo"), lambda h: h.list_carriers(), "Bearer tok-123456789"),
        (
            lambda: JenkinsHook(jenkins_conn_id="echo"),
            lambda h: h.get_job("a/b"),
            "Basic " + base64.b64encode(b"rollout:tok-123456789").decode(),
        ),
    ],
)
def test_token_is_sent_as_the_system_expects_and_never_shown(
    stub_server, stub_connection, caplog, capsys, hook_factory, call, header
):
    """A server that echoes the Authorization header in its error body must not leak it."""
    received = []

    def echo(method, path, headers, body):
        received.append(headers.get("Authorization"))
        return (
            401,
            {"Content-Type": "text/plain"},
            f"bad credentials: {headers.get('Authorization')}".encode(),
        )

    stub_connection("echo", f"{stub_server(echo)}/api", login="rollout", password="tok-123456789")
    with caplog.at_level(logging.DEBUG), pytest.raises(ExternalSystemError) as info:
        call(hook_factory())
    assert received == [header], "one attempt only: 4xx is not retried"
    assert info.value.status == 401
    shown = str(info.value) + caplog.text + capsys.readouterr().out
    assert "tok-123456789" not in shown
    assert header.split()[-1] not in shown
    assert str(info.value).endswith("***")


def test_reset_makes_the_next_request_look_the_connection_up_again(stub_server, stub_connection):
    """A trigger keeps its hooks for a whole wait and resets them every poll: an edited connection
    (here: pointed at another server) counts from the next poll, as with a hook built per poll."""
    seen = []

    def server(name):
        def respond(method, path, headers, body):
            seen.append((name, headers.get("Cookie")))
            cookie = {"Set-Cookie": f"JSESSIONID.abc={name}; Path=/"}
            return 200, {"Content-Type": "application/json", **cookie}, b'{"number": 7, "result": "SUCCESS"}'

        return respond

    stub_connection("moving", f"{stub_server(server('first'))}/jenkins", login="u", password="s3cret")
    hook = JenkinsHook(jenkins_conn_id="moving", retries=0)
    hook.get_build("report", "lastSuccessfulBuild")
    stub_connection("moving", f"{stub_server(server('second'))}/jenkins", login="u", password="s3cret")
    hook.get_build("report", "lastSuccessfulBuild")
    assert seen == [("first", None), ("first", "JSESSIONID.abc=first")], "without reset: the same connection"
    hook.reset()
    hook.get_build("report", "lastSuccessfulBuild")
    assert seen[-1] == ("second", None), "after reset: the edited connection, and no old Jenkins session"
