"""The FastAPI app mounted by the api-server at ``/rollout-status``: HTML pages and their JSON.

Routes (relative to the mount): ``/`` (runs, newest first), ``/runs/{run_id}`` (one rollout),
``/dags/{dag_id}/runs/{run_id}`` (the run view's tab), ``/api/runs`` and ``/api/runs/{run_id}`` (the
same data as JSON), ``/icon.svg`` (nav icon).

Access follows Airflow's auth manager: the caller's JWT (the UI's ``_token`` cookie or a Bearer
header) must allow reading the rollout DAG's runs, task instances and XComs. Without a login the
pages redirect to Airflow's login and the JSON answers 401.

Optional setting ``[rollout_status] change_request_url`` (env
``AIRFLOW__ROLLOUT_STATUS__CHANGE_REQUEST_URL``): the link of one change request, with
``{request_id}`` (required) and optionally ``{target}``, ``{project_key}``, ``{environment_key}``,
``{flag_key}``; default: LaunchDarkly's page of the request. Each request's status is read from
LaunchDarkly when the page is made (the run's records when LaunchDarkly cannot be read).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rollout_status import URL_PREFIX
from rollout_status.status_data import (
    DAG_ID,
    apply_backouts,
    held_builds,
    hold_of,
    load_backouts,
    load_run,
    load_runs,
    read_hold_variable,
    with_live_requests,
)
from rollout_status.status_render import STATE_COLORS, render

READ_ENTITIES = ("RUN", "TASK_INSTANCE", "XCOM")
WAITING_STATES = (
    "running",
    "deferred",
    "awaiting_input",
    "queued",
    "scheduled",
    "up_for_retry",
    "up_for_reschedule",
)
ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#51504f" '
    'stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M3 20h18"/>'
    '<rect x="4" y="11" width="3" height="7"/><rect x="10.5" y="7" width="3" height="11"/>'
    '<rect x="17" y="3" width="3" height="15"/></svg>'
)

bearer = HTTPBearer(auto_error=False)
app = FastAPI(title="Rollout status", description=__doc__.splitlines()[0], docs_url=None, redoc_url=None)


class LoginRequired(Exception):
    """Raised for an HTML page without a valid login: answered with a redirect to Airflow's login."""


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
Limit = Annotated[int, Query(ge=1, le=200)]


async def current_user(request: Request, credentials: Credentials):
    """The caller as Airflow's auth manager sees it, allowed to read the rollout DAG's runs and XComs."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.security import get_user

    try:
        user = await get_user(request, None, credentials)
    except HTTPException as exc:
        if exc.status_code == 401 and not _is_api(request):
            raise LoginRequired() from exc
        raise
    manager = get_auth_manager()
    for entity in READ_ENTITIES:
        if not manager.is_authorized_dag(
            method="GET", access_entity=DagAccessEntity[entity], details=DagDetails(id=DAG_ID), user=user
        ):
            raise HTTPException(status_code=403, detail=f"not allowed to read {entity.lower()} of {DAG_ID}")
    return user


User = Annotated[Any, Depends(current_user)]


def _is_api(request: Request) -> bool:
    """Whether the request is for the JSON API (path relative to this app's mount)."""
    path, root = request.url.path, str(request.scope.get("root_path") or "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.startswith("/api/")


@app.exception_handler(LoginRequired)
async def _to_login(request: Request, exc: LoginRequired) -> Response:
    from airflow.api_fastapi.app import get_auth_manager

    return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=307)


def _roots(request: Request) -> tuple[str, str]:
    """This app's URL path (``.../rollout-status``) and the Airflow UI's root path."""
    base = str(request.scope.get("root_path") or URL_PREFIX).rstrip("/")
    airflow_root = base[: -len(URL_PREFIX)] if base.endswith(URL_PREFIX) else ""
    return base, airflow_root


def _plan():
    from image_rollout.plan import load_plan

    return load_plan()


def _change_request_template(plan) -> str:
    """The configured link template of a change request, or "" for LaunchDarkly's own request page."""
    from airflow.configuration import conf

    template = conf.get("rollout_status", "change_request_url", fallback="") or ""
    if template and "{request_id}" not in template:
        raise HTTPException(
            status_code=500,
            detail=f"[rollout_status] change_request_url {template!r} has no {{request_id}}: "
            "every change request would link the same page",
        )
    return template


def _live_requests() -> tuple[list[dict] | None, str | None]:
    """The flag's change requests as LaunchDarkly reports them now, or (None, why not).

    One read per page, short timeout and no retries: the page must not hang on LaunchDarkly.
    """
    from image_rollout.hooks.flags import FlagsHook

    try:
        return FlagsHook(timeout=5, retries=0).list_change_requests(), None
    except Exception as exc:  # noqa: BLE001 - any failure: the page shows the recorded status and why
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


def _load_detail(run_id: str, plan) -> dict | None:
    """One run's data, its change requests' status read from LaunchDarkly."""
    run = _with_session(load_run, run_id, plan, change_request_template=_change_request_template(plan))
    if run is None or not run.get("change_requests"):
        return run
    return with_live_requests(run, *_live_requests())


def _with_session(fn, *args, **kwargs) -> Any:
    from airflow.utils.session import create_session

    with create_session() as session:
        return fn(session, *args, **kwargs)


def _refresh(state: str | None) -> int | None:
    return 15 if state in ("running", "queued") else None


def _page(template: str, request: Request, status_code: int = 200, **context) -> HTMLResponse:
    base, airflow_root = _roots(request)
    html = render(
        template,
        base=base,
        airflow_root=airflow_root,
        dag_id=DAG_ID,
        colors=STATE_COLORS,
        waiting=WAITING_STATES,
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})


@app.get("/", response_class=HTMLResponse)
def runs_page(request: Request, user: User, limit: Limit = 25) -> HTMLResponse:
    """Every rollout, newest first."""
    now = datetime.now(UTC)
    plan = _plan()
    runs = _with_session(load_runs, plan, limit=limit, now=now)
    refresh = 15 if any(r["state"] in ("running", "queued") for r in runs) else None
    return _page(
        "runs.html", request, runs=runs, plan_name=plan.name, now=now.isoformat(), refresh=refresh, error=None,
        holds=held_builds(read_hold_variable()),
    )


@app.get("/runs/{run_id:path}", response_class=HTMLResponse)
def run_page(run_id: str, request: Request, user: User) -> HTMLResponse:
    """One rollout: targets, gates, evidence, change requests, adoption, rollback."""
    plan = _plan()
    run = _load_detail(run_id, plan)
    if run is None:
        now = datetime.now(UTC)
        return _page(
            "runs.html",
            request,
            status_code=404,
            runs=_with_session(load_runs, plan, now=now),  # the runs there are, to pick from
            plan_name=plan.name,
            now=now.isoformat(),
            refresh=None,
            error=f"{DAG_ID} has no run {run_id!r}.",
        )
    return _page("run.html", request, run=_with_hold_and_backouts(run), refresh=_refresh(run["state"]))


@app.get("/dags/{dag_id}/runs/{run_id:path}", response_class=HTMLResponse)
def dag_run_tab(dag_id: str, run_id: str, request: Request, user: User) -> HTMLResponse:
    """The run view's "Rollout status" tab: the run page, or a note for runs of other DAGs."""
    if dag_id != DAG_ID:
        plan = _plan()
        return _page(
            "runs.html",
            request,
            runs=[],
            plan_name=plan.name,
            now=datetime.now(UTC).isoformat(),
            refresh=None,
            error=f"{dag_id} is not the rollout DAG: this page shows runs of {DAG_ID}.",
        )
    return run_page(run_id, request, user)


@app.get("/api/runs")
def runs_json(user: User, limit: Limit = 25) -> JSONResponse:
    """Rows of the runs page as JSON."""
    return JSONResponse({"dag_id": DAG_ID, "runs": _with_session(load_runs, _plan(), limit=limit)})


@app.get("/api/runs/{run_id:path}")
def run_json(run_id: str, user: User) -> JSONResponse:
    """One rollout's data as JSON (what the run page shows)."""
    plan = _plan()
    run = _load_detail(run_id, plan)
    if run is None:
        raise HTTPException(status_code=404, detail=f"{DAG_ID} has no run {run_id!r}")
    return JSONResponse(_with_hold_and_backouts(run))


def _with_hold_and_backouts(run: dict) -> dict:
    """The run's data plus its build's hold (Variable image_rollout_hold) and backouts."""
    build = (run.get("build") or {}).get("name")
    run["hold"] = hold_of(build, read_hold_variable())
    run["backouts"] = _with_session(load_backouts, build)
    return apply_backouts(run, run["backouts"])


@app.get("/icon.svg", include_in_schema=False)
def icon() -> Response:
    """Nav icon for the Airflow UI menu entry."""
    return Response(ICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})
