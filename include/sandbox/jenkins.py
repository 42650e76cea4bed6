"""Jenkins JSON API shapes (as python-jenkins reads them) over the sandbox's jobs and builds."""

from __future__ import annotations

import hashlib
import secrets
from http.cookies import SimpleCookie
from urllib.parse import quote, unquote

from include.sandbox import seed
from include.sandbox.core import Sandbox, epoch_ms
from include.sandbox.routing import ANY, Route, dispatch
from include.sandbox.web import Request, Response, json_response, text_response

VERSION_HEADERS = {"X-Jenkins": "2.426.3"}
FOLDER_CLASS = "com.cloudbees.hudson.plugins.folder.Folder"
JOB_CLASS = "hudson.model.FreeStyleProject"
BUILD_CLASS = "hudson.model.FreeStyleBuild"
CRUMB_FIELD = "Jenkins-Crumb"
SESSION_COOKIE = "JSESSIONID.5a1dbb0c"
#: Jobs with parameter definitions (name -> default): Jenkins refuses `POST .../build` on them.
PARAMETERS = {seed.IMAGE_JOB: {"BUILD_NAME": ""}}


def _crumb(session: str) -> str:
    return hashlib.sha256(f"sandbox-crumb/{session}".encode()).hexdigest()


def _session(req: Request) -> str | None:
    cookie = SimpleCookie()
    try:
        cookie.load(req.headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header is no session
        return None
    morsel = cookie.get(SESSION_COOKIE)
    return morsel.value if morsel is not None else None


def _forbidden(message: str) -> Response:
    return text_response(f"<html><body><h2>HTTP ERROR 403 {message}</h2></body></html>", 403,
                         "text/html; charset=utf-8")


def _job_url(base: str, full_name: str) -> str:
    return base + "/" + "".join(f"job/{quote(p, safe='')}/" for p in full_name.split("/"))


def _not_found(what: str) -> Response:
    resp = text_response(f"<html><body><h2>HTTP ERROR 404 Not Found</h2><p>{what}</p></body></html>", 404,
                         "text/html; charset=utf-8")
    resp.headers.update(VERSION_HEADERS)
    return resp


def _children(sb: Sandbox, base: str, folder: str) -> list[dict]:
    """Direct children of a folder ("" = root), folders carrying their own `jobs` (python-jenkins recurses)."""
    prefix = folder + "/" if folder else ""
    out = []
    for name in seed.FOLDERS:
        if name.startswith(prefix) and "/" not in name[len(prefix):]:
            out.append({"_class": FOLDER_CLASS, "name": name.rsplit("/", 1)[-1], "fullname": name,
                        "url": _job_url(base, name), "jobs": _children(sb, base, name)})
    for name in sb.jobs:
        if name.startswith(prefix) and "/" not in name[len(prefix):]:
            out.append({"_class": JOB_CLASS, "name": name.rsplit("/", 1)[-1], "fullname": name,
                        "url": _job_url(base, name), "color": _color(sb, name)})
    return out


def _color(sb: Sandbox, job: str) -> str:
    last = sb.find_build(job, "lastCompletedBuild")
    color = "notbuilt" if last is None else ("blue" if last["result"] == "SUCCESS" else "red")
    building = sb.find_build(job, "lastBuild")
    return color + "_anime" if building and building["building"] else color


def _build_ref(base: str, build: dict | None) -> dict | None:
    if build is None:
        return None
    return {"_class": BUILD_CLASS, "number": build["number"], "url": f"{_job_url(base, build['job'])}{build['number']}/"}


def job_json(sb: Sandbox, base: str, job: str) -> dict:
    builds = sorted(sb.jobs[job]["builds"].values(), key=lambda b: -b["number"])
    short = job.rsplit("/", 1)[-1]
    return {
        "_class": JOB_CLASS,
        "name": short,
        "fullName": job,
        "displayName": short,
        "fullDisplayName": job.replace("/", " » "),
        "url": _job_url(base, job),
        "buildable": True,
        "color": _color(sb, job),
        "builds": [_build_ref(base, b) for b in builds],
        "firstBuild": _build_ref(base, builds[-1] if builds else None),
        **{alias: _build_ref(base, sb.find_build(job, alias)) for alias in (
            "lastBuild", "lastCompletedBuild", "lastSuccessfulBuild", "lastStableBuild", "lastFailedBuild",
            "lastUnsuccessfulBuild")},
        "nextBuildNumber": sb.jobs[job]["next"],
        "inQueue": False,
        "queueItem": None,
        "keepDependencies": False,
        "property": [_parameters_property(job)] if job in PARAMETERS else [],
        "healthReport": [],
    }


def _parameters_property(job: str) -> dict:
    return {
        "_class": "hudson.model.ParametersDefinitionProperty",
        "parameterDefinitions": [
            {"_class": "hudson.model.StringParameterDefinition", "name": name, "type": "StringParameterDefinition",
             "description": "immutable image build name", "defaultParameterValue": {
                 "_class": "hudson.model.StringParameterValue", "name": name, "value": default}}
            for name, default in PARAMETERS[job].items()
        ],
    }


def build_json(sb: Sandbox, base: str, build: dict) -> dict:
    job = build["job"]
    url = f"{_job_url(base, job)}{build['number']}/"
    actions: list[dict] = [{"_class": "hudson.model.CauseAction", "causes": build["causes"]}]
    if build["params"]:
        actions.append({"_class": "hudson.model.ParametersAction",
                        "parameters": [{"_class": "hudson.model.StringParameterValue", "name": k, "value": v}
                                       for k, v in build["params"].items()]})
    return {
        "_class": BUILD_CLASS,
        "number": build["number"],
        "id": str(build["number"]),
        "url": url,
        "result": build["result"],
        "building": build["building"],
        "displayName": build["display"],
        "fullDisplayName": f"{job.replace('/', ' » ')} {build['display']}",
        "description": None,
        "timestamp": epoch_ms(build["timestamp"]),
        "duration": 0 if build["building"] else int(build["duration"] * 1000),
        "estimatedDuration": 2832400 if job == seed.IMAGE_JOB else 94200,
        "queueId": build["queue_id"] or build["number"] + 8000,
        "keepLog": False,
        "builtOn": "conductors-packer-07" if job == seed.IMAGE_JOB else "",
        "artifacts": [{"fileName": p.rsplit("/", 1)[-1], "relativePath": p, "displayPath": p.rsplit("/", 1)[-1]}
                      for p in build["artifacts"]],
        "actions": actions,
        "changeSet": {"_class": "hudson.scm.EmptyChangeLogSet", "items": [], "kind": None},
    }


def handle(sb: Sandbox, req: Request) -> Response:
    resp = _route(sb, req)
    resp.headers.update(VERSION_HEADERS)
    return resp


def _route(sb: Sandbox, req: Request) -> Response:
    base = req.base_url + "/jenkins"
    segs = [unquote(s) for s in req.path.split("/") if s]
    if req.method == "POST" and not _crumb_valid(sb, req):
        return _forbidden("No valid crumb was included in the request")
    return dispatch(ROUTES, req.method, segs, sb, req, base) or _not_found(req.path)


def _crumb_valid(sb: Sandbox, req: Request) -> bool:
    """A POST needs the crumb issued to its session (the JSESSIONID cookie), as in Jenkins."""
    session = _session(req)
    crumb = req.headers.get(CRUMB_FIELD.lower())
    return session in sb.jenkins_sessions and bool(crumb) and crumb == sb.jenkins_sessions[session]


# -- the instance: root, crumb issuer, user, queue ----------------------------------------------------


def _root(sb: Sandbox, req: Request, base: str) -> Response:
    return json_response({"_class": "hudson.model.Hudson", "mode": "NORMAL", "nodeName": "",
                          "jobs": _children(sb, base, ""), "url": base + "/", "useCrumbs": True})


def _crumb_issuer(sb: Sandbox, req: Request, base: str) -> Response:
    """A crumb is valid only with the session it was issued to (the JSESSIONID cookie), as in Jenkins."""
    session = _session(req)
    headers = {}
    if session not in sb.jenkins_sessions:
        session = secrets.token_hex(12)
        sb.jenkins_sessions[session] = _crumb(session)
        headers["Set-Cookie"] = f"{SESSION_COOKIE}={session}; Path=/jenkins; HttpOnly"
    return json_response({"_class": "hudson.security.csrf.DefaultCrumbIssuer", "crumb": _crumb(session),
                          "crumbRequestField": CRUMB_FIELD}, headers=headers)


def _who_am_i(sb: Sandbox, req: Request, base: str) -> Response:
    return json_response({"_class": "hudson.model.User", "id": "sandbox", "fullName": "sandbox"})


def _queue_item(sb: Sandbox, req: Request, base: str, item_id: str, rest: list[str]) -> Response:
    if not item_id.isdigit():
        return _not_found(req.path)
    item = sb.queue.get(int(item_id))
    if item is None:
        return _not_found(f"queue item {item_id}")
    body = {
        "_class": "hudson.model.Queue$WaitingItem",
        "id": item["id"],
        "inQueueSince": epoch_ms(item["since"]),
        "blocked": False, "buildable": False, "stuck": False,
        "why": "In the quiet period.",
        "params": "".join(f"\n{k}={v}" for k, v in item["params"].items()),
        "task": {"_class": JOB_CLASS, "name": item["job"].rsplit("/", 1)[-1], "url": _job_url(base, item["job"])},
        "url": f"queue/item/{item['id']}/",
        "actions": [],
    }
    if item["number"] is not None:
        # Left the queue: now (and only now) it names its executable, as Jenkins' Queue$LeftItem does.
        build = sb.jobs[item["job"]]["builds"].get(item["number"])
        body.update({"_class": "hudson.model.Queue$LeftItem", "why": None, "cancelled": False,
                     "executable": _build_ref(base, build)})
    return json_response(body)


# -- folders and jobs (`/job/<folder>/job/<name>/...`) --------------------------------------------------


def _split_job_path(segs: list[str]) -> tuple[list[str], list[str]]:
    """`job/a/job/b/rest...` -> (["a", "b"], rest)."""
    names = []
    i = 0
    while i + 1 < len(segs) and segs[i] == "job":
        names.append(segs[i + 1])
        i += 2
    return names, segs[i:]


def _job(sb: Sandbox, req: Request, base: str, path: list[str]) -> Response:
    names, rest = _split_job_path(["job", *path])
    full = "/".join(names)
    if full in seed.FOLDERS and rest in ([], ["api", "json"]) and req.method == "GET":
        return json_response({"_class": FOLDER_CLASS, "name": names[-1], "fullName": full,
                              "url": _job_url(base, full), "jobs": _children(sb, base, full)})
    if full not in sb.jobs:
        return _not_found(f"job {full}")
    return dispatch(JOB_ROUTES, req.method, rest, sb, req, base, full) or _not_found(req.path)


def _job_api(sb: Sandbox, req: Request, base: str, full: str) -> Response:
    return json_response(job_json(sb, base, full))


def _build_now(sb: Sandbox, req: Request, base: str, full: str) -> Response:
    """`POST .../build`: refused on a parameterized job, as Jenkins does without a `json` form."""
    return _trigger(sb, req, base, full, with_parameters=False)


def _build_with_parameters(sb: Sandbox, req: Request, base: str, full: str) -> Response:
    """`POST .../buildWithParameters`: only on a parameterized job; unknown parameters are dropped."""
    return _trigger(sb, req, base, full, with_parameters=True)


def _trigger(sb: Sandbox, req: Request, base: str, full: str, *, with_parameters: bool) -> Response:
    if req.method != "POST":
        return text_response("Method Not Allowed", 405)
    params = {k: v[0] for k, v in req.query.items() if k not in ("token", "delay", "cause")}
    if req.body and "json" not in req.headers.get("content-type", ""):
        params.update(req.form_or_json())
    defined = PARAMETERS.get(full)
    if not with_parameters and defined is not None:
        # Jenkins: a parameterized job built through /build without a `json` form is refused.
        return text_response("<html><body><h2>HTTP ERROR 400 Nothing is submitted</h2></body></html>", 400,
                             "text/html; charset=utf-8")
    if with_parameters:
        if defined is None:
            return text_response(f"<html><body><h2>HTTP ERROR 400 {full} is not parameterized</h2>"
                                 "</body></html>", 400, "text/html; charset=utf-8")
        params = {**defined, **{k: v for k, v in params.items() if k in defined}}
    queue_id = sb.trigger_build(full, {k: str(v) for k, v in params.items()})
    return Response(201, "", "text/plain", {"Location": f"{base}/queue/item/{queue_id}/"})


# -- one build (`.../<number or alias>/...`) -------------------------------------------------------------


def _build(sb: Sandbox, req: Request, base: str, full: str, ref: str, tail: list[str]) -> Response:
    build = sb.find_build(full, ref)
    if build is None:
        return _not_found(f"build {ref} of {full}")
    return dispatch(BUILD_ROUTES, req.method, tail, sb, req, base, build) or _not_found(req.path)


def _build_api(sb: Sandbox, req: Request, base: str, build: dict) -> Response:
    return json_response(build_json(sb, base, build))


def _console(sb: Sandbox, req: Request, base: str, build: dict) -> Response:
    return text_response(build["console"])


def _progressive_text(sb: Sandbox, req: Request, base: str, build: dict) -> Response:
    """The console with the headers python-jenkins' progressive reader follows."""
    resp = _console(sb, req, base, build)
    resp.headers.update({"X-Text-Size": str(len(build["console"].encode())),
                         "X-More-Data": "true" if build["building"] else "false"})
    return resp


def _artifact(sb: Sandbox, req: Request, base: str, build: dict, relative: list[str]) -> Response:
    path = "/".join(relative)
    if path not in build["artifacts"]:
        return _not_found(f"artifact {path}")
    ctype = "application/json" if path.endswith(".json") else "text/plain; charset=utf-8"
    return text_response(build["artifacts"][path], 200, ctype)


#: Jenkins' resources the sandbox serves, per path below `/jenkins` (API.md "Jenkins"); a POST without a
#: valid crumb is refused before any of them.
ROUTES: tuple[Route, ...] = (
    ("GET", "", _root),
    ("GET", "api/json", _root),
    ("GET", "crumbIssuer/api/json", _crumb_issuer),
    ("GET", "me/api/json", _who_am_i),
    ("GET", "whoAmI/api/json", _who_am_i),
    ("GET", "queue/item/{item_id}/{rest*}", _queue_item),
    (ANY, "job/{path+}", _job),
)
#: Below a job's path.
JOB_ROUTES: tuple[Route, ...] = (
    ("GET", "", _job_api),
    ("GET", "api/json", _job_api),
    (ANY, "build", _build_now),
    (ANY, "buildWithParameters", _build_with_parameters),
    (ANY, "{ref}/{tail*}", _build),
)
#: Below a build's path (its number or an alias such as `lastBuild`).
BUILD_ROUTES: tuple[Route, ...] = (
    ("GET", "", _build_api),
    ("GET", "api/json", _build_api),
    ("GET", "consoleText", _console),
    ("GET", "console", _console),
    ("GET", "logText/progressiveText", _progressive_text),
    ("GET", "artifact/{relative*}", _artifact),
)
