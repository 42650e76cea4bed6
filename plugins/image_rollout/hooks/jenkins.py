"""Jenkins: build status, console logs, artifacts and rebuilds of the image jobs."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from requests.cookies import RequestsCookieJar

from image_rollout.hooks._http import ExternalSystemError, ResponseLostError, RolloutHttpHook

#: Build references Jenkins accepts in place of a number.
BUILD_ALIASES = frozenset(
    {
        "lastBuild",
        "lastCompletedBuild",
        "lastSuccessfulBuild",
        "lastStableBuild",
        "lastFailedBuild",
        "lastUnsuccessfulBuild",
    }
)
_QUEUE_ITEM = re.compile(r"/queue/item/(\d+)/?$")


def job_url_path(job_path: str) -> str:
    """
    Map a folder path to Jenkins' URL form.

    ``Conductors/oceanPI/immutable_image`` -> ``/job/Conductors/job/oceanPI/job/immutable_image``.
    A path already in URL form (starting with ``job/``) is accepted as is.

    :param job_path: the job's full name, folders separated by ``/``.
    """
    parts = [part for part in job_path.strip().split("/") if part]
    if parts and parts[0] == "job":
        parts = parts[1::2]
    if not parts or any(part in (".", "..") for part in parts):
        raise ValueError(f"not a Jenkins job path: {job_path!r}")
    return "".join(f"/job/{quote(part, safe='')}" for part in parts)


class JenkinsHook(RolloutHttpHook):
    """
    Read and trigger the Jenkins jobs that build the worker image.

    The rollout starts from a Jenkins build: its result, its ``image_ids.json`` artifact
    and its console log (copied into the evidence file); the fleet report job publishes the
    image-count logs the prod monitoring reads. Uses Jenkins' JSON API with basic auth
    (login = user, password = API token). POSTs carry a CSRF crumb fetched in the same session
    (the crumb is only valid with the session cookie that came with it): all requests of one
    hook instance share one cookie jar.

    :param jenkins_conn_id: connection with the Jenkins base URL as host (may include a
        path prefix), login and API token.
    :param timeout: seconds per request; default from the connection extra ``timeout``, else 30.
    :param retries: retries on 5xx, connection errors and timeouts; default from extra ``retries``.
    :param retry_wait: first backoff in seconds (doubles); default from extra ``retry_wait``.
    """

    conn_name_attr = "jenkins_conn_id"
    default_conn_name = "jenkins_default"
    conn_type = "http"
    hook_name = "Jenkins"
    system = "jenkins"

    def __init__(
        self,
        *,
        jenkins_conn_id: str = default_conn_name,
        timeout: float | None = None,
        retries: int | None = None,
        retry_wait: float | None = None,
    ) -> None:
        super().__init__(conn_id=jenkins_conn_id, timeout=timeout, retries=retries, retry_wait=retry_wait)
        self.jenkins_conn_id = jenkins_conn_id
        self._cookies = RequestsCookieJar()

    def get_conn(self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None):
        """A session sharing this hook's cookie jar, so the crumb and the POST are one Jenkins session."""
        session = super().get_conn(headers, extra_options)
        session.cookies = self._cookies
        return session

    def reset(self) -> None:
        """Forget the connection and the Jenkins session (cookies): the next request starts as a new hook's."""
        super().reset()
        self._cookies.clear()

    def secrets(self) -> list[str]:
        """The API token, and the basic-auth header value that carries it (an echoing proxy may show it)."""
        secrets = super().secrets()
        login, password = self.connection.login, self.connection.password
        if login and password:
            secrets.append(base64.b64encode(f"{login}:{password}".encode()).decode("ascii"))
        return secrets

    @staticmethod
    def _build_ref(number_or_alias: int | str) -> str:
        ref = str(number_or_alias).strip()
        if not (ref.isdigit() or ref in BUILD_ALIASES):
            raise ValueError(f"not a Jenkins build number or alias: {number_or_alias!r}")
        return ref

    def get_job(self, job_path: str) -> dict[str, Any]:
        """
        Return the job's JSON (``builds``, ``lastBuild``, ``lastSuccessfulBuild``, ...).

        :param job_path: e.g. ``Conductors/oceanPI/immutable_image``.
        """
        path = f"{job_url_path(job_path)}/api/json"
        job = self.request_json("GET", path)
        builds = job.get("builds", [])
        if not isinstance(builds, list) or not all(isinstance(b, dict) and "number" in b for b in builds):
            raise self.malformed(f"GET {path}", "'builds' is not a list of builds")
        return job

    def get_build(self, job_path: str, number_or_alias: int | str) -> dict[str, Any]:
        """
        Return one build's JSON (``result``, ``building``, ``displayName``, ``artifacts``, ``actions``).

        :param job_path: e.g. ``Conductors/oceanPI/immutable_image``.
        :param number_or_alias: a build number or ``lastBuild``, ``lastSuccessfulBuild``, ...
        """
        path = f"{job_url_path(job_path)}/{self._build_ref(number_or_alias)}/api/json"
        build = self.request_json("GET", path)
        self.require(build, "number", int, f"GET {path}")
        return build

    def find_build_by_name(
        self, job_path: str, build_name: str, *, limit: int = 100
    ) -> dict[str, Any] | None:
        """
        Return the newest build whose ``displayName`` is ``build_name``, or None.

        The image jobs name each build after the image build (``533-1251-880-20211101``), and a
        rebuild keeps the name, so the newest match is the one that counts.

        :param job_path: e.g. ``Conductors/oceanPI/immutable_image``.
        :param build_name: the display name to look for.
        :param limit: how many of the newest builds to scan.
        """
        path = f"{job_url_path(job_path)}/api/json"
        # ``tree`` lets a real Jenkins answer in one call; without displayName we read each build.
        job = self.request_json(
            "GET", path, params={"tree": "builds[number,displayName,result,building,url,timestamp]"}
        )
        builds = job.get("builds") or []
        if not isinstance(builds, list):
            raise self.malformed(f"GET {path}", "'builds' is not a list")
        numbers = sorted(
            (b for b in builds if isinstance(b, dict) and isinstance(b.get("number"), int)),
            key=lambda b: b["number"],
            reverse=True,
        )[:limit]
        for summary in numbers:
            if "displayName" in summary:
                if summary["displayName"] != build_name:
                    continue
                return self.get_build(job_path, summary["number"])
            build = self.get_build(job_path, summary["number"])
            if build.get("displayName") == build_name:
                return build
        return None

    def get_console_text(self, job_path: str, number: int | str) -> str:
        """
        Return a build's full console log (the evidence file quotes it).

        :param job_path: e.g. ``Conductors/oceanPI/immutable_image``.
        :param number: build number or alias.
        """
        response = self.request("GET", f"{job_url_path(job_path)}/{self._build_ref(number)}/consoleText")
        return _text(response)

    def _artifact_path(self, job_path: str, number: int | str, relative_path: str) -> str:
        parts = relative_path.strip("/").split("/")
        if not relative_path.strip("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"not a plain artifact path: {relative_path!r}")
        artifact = "/".join(quote(part, safe="") for part in parts)
        return f"{job_url_path(job_path)}/{self._build_ref(number)}/artifact/{artifact}"

    def get_artifact_text(self, job_path: str, number: int | str, relative_path: str) -> str:
        """
        Return an artifact's content as text.

        :param job_path: e.g. ``Conductors/oceanPI/immutable_image``.
        :param number: build number or alias.
        :param relative_path: the artifact's ``relativePath``, e.g. ``image_ids.json``.
        """
        return _text(self.request("GET", self._artifact_path(job_path, number, relative_path)))

    def get_artifact_json(self, job_path: str, number: int | str, relative_path: str) -> Any:
        """
        Return an artifact parsed as JSON (e.g. the build's ``image_ids.json`` image map).

        :param job_path: e.g. ``Conductors/oceanPI/immutable_image``.
        :param number: build number or alias.
        :param relative_path: the artifact's ``relativePath``.
        """
        path = self._artifact_path(job_path, number, relative_path)
        response = self.request("GET", path)
        return self.decode_json(response, f"GET {path}", expect=(dict, list))

    def iter_artifact_lines(self, job_path: str, number: int | str, relative_path: str) -> Iterator[str]:
        """
        Yield an artifact's lines without holding it in memory (fleet reports run to 1M lines).

        Lines are decoded as UTF-8 (undecodable bytes replaced) and have no line ending.

        :param job_path: e.g. ``Conductors/Conductors-Infrastructure/reportCarrierWorkerIaasImageCounts``.
        :param number: build number or alias.
        :param relative_path: the artifact's ``relativePath``.
        """
        path = self._artifact_path(job_path, number, relative_path)
        response = self.request("GET", path, stream=True)
        with response:
            pending = b""
            try:
                for chunk in response.iter_content(chunk_size=64 * 1024):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        yield line.rstrip(b"\r").decode("utf-8", errors="replace")
            except OSError as exc:  # requests' ChunkedEncodingError etc. are OSErrors
                raise ExternalSystemError(
                    system=self.system,
                    call=f"GET {path}",
                    body=self.redact(f"{type(exc).__name__}: {exc}"),
                    reason="broke off while streaming",
                ) from None
            if pending:
                yield pending.rstrip(b"\r").decode("utf-8", errors="replace")

    def _crumb_headers(self) -> dict[str, str]:
        """Return the CSRF crumb header, or nothing when the server does not issue crumbs."""
        response = self.request("GET", "/crumbIssuer/api/json", allowed_status=(403, 404))
        if response.status_code != 200:
            return {}
        crumb = self.decode_json(response, "GET /crumbIssuer/api/json")
        field, value = crumb.get("crumbRequestField"), crumb.get("crumb")
        return {field: value} if isinstance(field, str) and isinstance(value, str) else {}

    def post(self, path: str, *, params: dict[str, str] | None = None):
        """
        POST with a fresh crumb from the same session; a 403 (crumb or session expired) gets one new crumb.

        :param path: path below the Jenkins root.
        :param params: query parameters.
        """
        for attempt in (1, 2):
            response = self.request(
                "POST", path, params=params, headers=self._crumb_headers(), allowed_status=(403,)
            )
            if response.status_code != 403:
                return response
            if attempt == 1:
                self.log.warning("Jenkins refused POST %s (HTTP 403): fetching a new crumb", path)
                self._cookies.clear()
        raise ExternalSystemError(
            system=self.system,
            call=f"POST {path}",
            status=403,
            body=self.redact(response.text[:500]),
            reason="refused (crumb or permission)",
        )

    @staticmethod
    def build_parameters(build: dict[str, Any]) -> dict[str, str] | None:
        """
        Return a build's parameters from its ``hudson.model.ParametersAction``, or None when it has none.

        :param build: the build's JSON (:meth:`get_build`).
        """
        for action in build.get("actions") or []:
            if not isinstance(action, dict) or not isinstance(action.get("parameters"), list):
                continue
            if action.get("_class", "hudson.model.ParametersAction") != "hudson.model.ParametersAction":
                continue
            parameters = {}
            for parameter in action["parameters"]:
                if isinstance(parameter, dict) and isinstance(parameter.get("name"), str):
                    value = parameter.get("value")
                    if isinstance(value, bool):
                        value = str(value).lower()
                    parameters[parameter["name"]] = "" if value is None else str(value)
            return parameters
        return None

    def _newer_build_with(self, job_path: str, after: int, parameters: dict[str, str] | None) -> int | None:
        """Return the number of a build newer than ``after`` started with ``parameters``, if any."""
        job = self.get_job(job_path)
        numbers = sorted(
            (b["number"] for b in job["builds"] if isinstance(b.get("number"), int)), reverse=True
        )
        for number in numbers:
            if number <= after:
                break
            if (self.build_parameters(self.get_build(job_path, number)) or None) == (parameters or None):
                return number
        return None

    def rebuild(
        self,
        job_path: str,
        number: int | str | None = None,
        *,
        parameters: dict[str, str] | None = None,
        wait_timeout: float = 600.0,
        poll_interval: float = 2.0,
    ) -> int:
        """
        Start a new build of the job with the parameters of build ``number``; return its number.

        A parameterized job is started with ``buildWithParameters`` and the original build's own
        parameters (its ``ParametersAction``); a job without parameters with ``build``. Jenkins
        answers with a queue item; the build number exists only when the item leaves the queue,
        so this follows the item until it has an executable. When the answer to the POST is lost,
        it looks for a build started with those parameters before posting again.

        :param job_path: e.g. ``Conductors/oceanPI/immutable_image``.
        :param number: the build to rebuild (default: the job's last build).
        :param parameters: explicit parameters instead of the build's own.
        :param wait_timeout: seconds to wait for the queue item to start.
        :param poll_interval: seconds between queue polls.
        """
        if parameters is None:
            original = self.get_build(job_path, "lastBuild" if number is None else number)
            parameters = self.build_parameters(original)
        endpoint = "buildWithParameters" if parameters else "build"
        path = f"{job_url_path(job_path)}/{endpoint}"
        call = f"POST {path}"
        last = (self.get_job(job_path).get("lastBuild") or {}).get("number")
        baseline = last if isinstance(last, int) else 0
        deadline = time.monotonic() + wait_timeout
        try:
            response = self.post(path, params=parameters or None)
        except ResponseLostError:
            self.log.warning("The answer to %s was lost: looking for the build before posting again", call)
            found = self._wait_for_lost_build(job_path, baseline, parameters, poll_interval)
            if found is not None:
                return found
            response = self.post(path, params=parameters or None)
        match = _QUEUE_ITEM.search(response.headers.get("Location", ""))
        if not match:
            raise self.malformed(call, "no queue item in the Location header", response)
        queue_path = f"/queue/item/{match.group(1)}/api/json"
        while True:
            item = self.request_json("GET", queue_path)
            if item.get("cancelled"):
                raise ExternalSystemError(
                    system=self.system, call=f"GET {queue_path}", reason="reports the build was cancelled"
                )
            executable = item.get("executable")
            if isinstance(executable, dict):
                number = self.require(executable, "number", int, f"GET {queue_path}")
                self.log.info("Jenkins started %s #%d", job_path, number)
                return number
            if time.monotonic() >= deadline:
                raise ExternalSystemError(
                    system=self.system,
                    call=f"GET {queue_path}",
                    reason=f"still queued after {wait_timeout:.0f}s",
                )
            time.sleep(poll_interval)

    def _wait_for_lost_build(
        self,
        job_path: str,
        baseline: int,
        parameters: dict[str, str] | None,
        poll_interval: float,
        *,
        grace: float = 5.0,
        queued_limit: float = 60.0,
    ) -> int | None:
        """After a lost answer: the build it started. Looks for ``grace`` seconds, longer (up to
        ``queued_limit``) while the job has an item in the queue; None when nothing turned up."""
        started = time.monotonic()
        while True:
            found = self._newer_build_with(job_path, baseline, parameters)
            if found is not None:
                self.log.info("Jenkins had started %s #%d: not posting again", job_path, found)
                return found
            elapsed = time.monotonic() - started
            if elapsed >= queued_limit or (elapsed >= grace and not self.get_job(job_path).get("inQueue")):
                return None
            time.sleep(poll_interval)

    def build_url(self, job_path: str, number: int | str) -> str:
        """
        Return the build's page URL, for links in evidence, Slack and change requests.

        :param job_path: e.g. ``Conductors/oceanPI/immutable_image``.
        :param number: build number or alias.
        """
        return self.url_from_endpoint(f"{job_url_path(job_path)}/{self._build_ref(number)}/")


def _text(response) -> str:
    """Decode a text body; Jenkins' ``text/plain`` often omits the charset, and it is UTF-8."""
    if "charset" not in response.headers.get("Content-Type", "").lower():
        response.encoding = "utf-8"
    return response.text
