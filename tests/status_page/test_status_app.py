"""The status app's access rules, in-process: no login -> login redirect (pages) or 401 (JSON); a user the
auth manager does not allow to read the rollout DAG -> 403. The allowed path runs in the browser test."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from rollout_status.status_app import app


class StubUser:
    def get_id(self) -> str:
        return "viewer"

    def get_name(self) -> str:
        return "viewer"


class StubAuthManager:
    def __init__(self, allow: bool):
        self.allow = allow
        self.asked: list[str] = []

    async def get_user_from_token(self, token: str):
        return StubUser()

    def is_authorized_dag(self, *, method, user, access_entity=None, details=None) -> bool:
        self.asked.append(f"{method} {access_entity.name} {details.id}")
        return self.allow

    def get_url_login(self, **kwargs) -> str:
        return f"/auth/login?next={kwargs.get('next_url')}"


@pytest.fixture
def client(monkeypatch):
    import airflow.api_fastapi.app as api_app
    import airflow.api_fastapi.core_api.security as security

    manager = StubAuthManager(allow=False)
    monkeypatch.setattr(api_app, "get_auth_manager", lambda: manager)
    monkeypatch.setattr(security, "get_auth_manager", lambda: manager)
    with TestClient(app, root_path="/rollout-status") as test_client:
        test_client.manager = manager
        yield test_client


def test_json_without_login_is_401(client):
    assert client.get("/api/runs").status_code == 401
    assert client.get("/api/runs/rollout__1-2-3-20240101").status_code == 401


def test_page_without_login_redirects_to_airflow_login(client):
    response = client.get("/runs/rollout__1-2-3-20240101", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"].startswith("/auth/login?next=")


def test_user_without_read_access_to_the_dag_is_403(client):
    response = client.get("/api/runs", headers={"Authorization": "Bearer any"})
    assert response.status_code == 403
    assert client.manager.asked == ["GET RUN immutable_image_rollout"]


def test_nav_icon_needs_no_login(client):
    response = client.get("/icon.svg")
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")


def test_tab_of_another_dags_run_says_so(client, monkeypatch):
    client.manager.allow = True
    response = client.get(
        "/dags/immutable_image_watcher/runs/scheduled__x", headers={"Authorization": "Bearer t"}
    )
    assert response.status_code == 200 and "is not the rollout DAG" in response.text


def test_plugin_registers_the_app_a_nav_entry_and_a_run_tab():
    import rollout_status_plugin as module

    plugin = module.RolloutStatusPlugin
    assert plugin.fastapi_apps[0]["url_prefix"] == "/rollout-status" and plugin.fastapi_apps[0]["app"] is app
    [nav] = [v for v in plugin.external_views if v["destination"] == "nav"]
    assert nav["href"] == "rollout-status/" and "url_route" not in nav  # a link: the page's own links work
    [tab] = [v for v in plugin.external_views if v["destination"] == "dag_run"]
    assert tab["href"] == "rollout-status/dags/{DAG_ID}/runs/{RUN_ID}" and tab["url_route"]


def test_unknown_run_says_so_without_claiming_there_are_no_runs(client, monkeypatch):
    import rollout_status.status_app as status_app

    client.manager.allow = True
    row = {"run_id": "rollout__1-2-3-20240101", "build": "1-2-3-20240101", "state": "success", "targets": 16,
           "serving_new": 16, "gates": 6, "gates_passed": 6, "gates_failed": 0, "adoption_percent": 95.0,
           "started_at": None, "ended_at": None, "current_stage": None, "failed_gate": None, "superseded_by": None}
    monkeypatch.setattr(status_app, "load_run", lambda session, run_id, plan, **kw: None)
    for runs, listed in (([row], True), ([], False)):
        monkeypatch.setattr(status_app, "load_runs", lambda session, plan, runs=runs, **kw: runs)
        response = client.get("/runs/rollout__9-9-9-20990101", headers={"Authorization": "Bearer t"})
        assert response.status_code == 404
        assert "has no run &#39;rollout__9-9-9-20990101&#39;" in response.text
        assert "No runs of" not in response.text
        assert ("1-2-3-20240101" in response.text) is listed
