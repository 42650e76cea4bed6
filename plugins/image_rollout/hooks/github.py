"""
GitHub Enterprise: the promotion evidence file in the Conductors team repository.

Every call goes through the github provider's ``GithubHook`` (PyGithub), which resolves the
connection (token or GitHub App auth, Enterprise base URL). This module is the thin layer on
top that the rollout needs: idempotent commits (a commit counts as ours only when it carries
the rollout's ``Rollout-Key:`` trailer and the file at that commit is what we meant to write),
files above 1 MB read through the blobs API, and the browser link cited by change requests.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import requests
from github import Auth, Github, GithubException, GithubRetry, InputGitAuthor, UnknownObjectException
from github.Repository import Repository

from image_rollout.hooks._http import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_MAX_WAIT,
    DEFAULT_RETRY_WAIT,
    DEFAULT_TIMEOUT,
    ExternalSystemError,
    MalformedResponseError,
    RedactsConnectionSecrets,
    retry_conflicts,
    truncate,
)
from image_rollout.preconditions import KEY_LINE_PREFIX, carries_key

try:  # the provider's hook; imported lazily in tests that do not need it
    from airflow.providers.github.hooks.github import GithubHook
except ImportError:  # pragma: no cover - the provider is pinned in requirements.txt
    GithubHook = None  # type: ignore[assignment,misc]

from airflow.providers.common.compat.sdk import BaseHook

T = TypeVar("T")

class GitHubEvidenceHook(RedactsConnectionSecrets, BaseHook):
    """
    Read and commit the evidence file of a promotion, through the github provider's ``GithubHook``.

    Change requests cite the evidence file by link and commit hash, so every commit must be
    deliberate: writing identical content makes no new commit (a retried task gets the same
    hash back), a concurrent update (409, or 422 for a create that raced) is re-read and retried,
    and a PUT whose answer was lost is looked up (trailer and content) before writing again.

    Connection (conn_type ``github``): host = the API base URL (GitHub Enterprise:
    ``https://<host>/api/v3``; empty for github.com), password = token (or the provider's GitHub
    App extras); extras ``owner`` (default ``alchemy-conductors``), ``repo`` (``team``), ``branch``
    (``master``), optional ``html_base_url`` (default: the host without ``/api/v3``),
    ``committer_name`` / ``committer_email``, and ``timeout``, ``retries``, ``retry_wait``,
    ``retry_max_wait``, ``seconds_between_requests``, ``seconds_between_writes`` for PyGithub.

    :param github_conn_id: the GitHub connection.
    :param timeout: seconds per request; default from the connection extra ``timeout``, else 30.
    :param retries: retries on 5xx and connection errors; default from extra ``retries``.
    :param retry_wait: backoff factor in seconds; default from extra ``retry_wait``.
    :param conflict_retries: how often to re-read and retry a PUT answered with 409/422.
    """

    conn_name_attr = "github_conn_id"
    default_conn_name = "github_evidence_default"
    conn_type = "github"
    hook_name = "GitHub Enterprise (evidence)"
    system = "github"

    def __init__(
        self,
        *,
        github_conn_id: str = default_conn_name,
        timeout: float | None = None,
        retries: int | None = None,
        retry_wait: float | None = None,
        conflict_retries: int = 3,
    ) -> None:
        super().__init__()
        self.github_conn_id = github_conn_id
        self.conflict_retries = conflict_retries
        self._timeout = timeout
        self._retries = retries
        self._retry_wait = retry_wait

    # -- connection ---------------------------------------------------------------------------

    @cached_property
    def connection(self):
        """The hook's Airflow connection (looked up on first use)."""
        return self.get_connection(self.github_conn_id)

    @cached_property
    def extras(self) -> dict[str, Any]:
        """The connection's extra field as a dict."""
        return dict(self.connection.extra_dejson or {})

    def extra(self, key: str, default: T) -> T:
        """Return a connection extra, or ``default`` when it is missing or empty."""
        value = self.extras.get(key)
        return default if value in (None, "") else value

    def _setting(self, override: Any, key: str, default: Any, cast: type) -> Any:
        return cast(override if override is not None else self.extra(key, default))

    @property
    def owner(self) -> str:
        """Repository owner (extra ``owner``)."""
        return str(self.extra("owner", "alchemy-conductors"))

    @property
    def repo(self) -> str:
        """Repository name (extra ``repo``)."""
        return str(self.extra("repo", "team"))

    @property
    def branch(self) -> str:
        """Branch the evidence is committed to (extra ``branch``)."""
        return str(self.extra("branch", "master"))

    @cached_property
    def client(self) -> Github:
        """
        The PyGithub client: the provider's ``GithubHook`` resolves the connection and its auth
        (token or GitHub App); the client is made again with the same auth and base URL and this
        hook's timeout and retries (``GithubHook`` uses PyGithub's defaults).
        """
        if GithubHook is None:  # pragma: no cover
            raise RuntimeError("apache-airflow-providers-github is not installed")
        provided = GithubHook(github_conn_id=self.github_conn_id).get_conn()
        auth: Auth.Auth | None = provided.requester.auth
        retry = GithubRetry(
            total=self._setting(self._retries, "retries", DEFAULT_RETRIES, int),
            backoff_factor=self._setting(self._retry_wait, "retry_wait", DEFAULT_RETRY_WAIT, float),
            backoff_max=float(self.extra("retry_max_wait", DEFAULT_RETRY_MAX_WAIT)),
        )
        options: dict[str, Any] = {}
        for key in ("seconds_between_requests", "seconds_between_writes"):
            if key in self.extras:
                options[key] = float(self.extras[key])
        return Github(
            auth=auth,
            base_url=self.api_base_url,
            timeout=max(1, round(self._setting(self._timeout, "timeout", DEFAULT_TIMEOUT, float))),
            retry=retry,
            **options,
        )

    @property
    def api_base_url(self) -> str:
        """The API base URL: the connection's host, else github.com's API."""
        host = (self.connection.host or "").rstrip("/")
        return host or "https://api.github.com"

    @cached_property
    def repository(self) -> Repository:
        """The evidence repository (lazy: no request until it is used)."""
        return self.client.get_repo(f"{self.owner}/{self.repo}", lazy=True)

    # -- calls --------------------------------------------------------------------------------

    def _repo_call(self, method: str, suffix: str) -> str:
        return f"{method} /repos/{self.owner}/{self.repo}{suffix}"

    def _call(self, call: str, fn: Callable[[], T], *, allow_404: bool = False) -> T | None:
        """Run one PyGithub call; turn its errors into :class:`ExternalSystemError` naming ``call``."""
        try:
            return fn()
        except UnknownObjectException:
            if allow_404:
                return None
            raise self._error(call, 404, "Not Found") from None
        except GithubException as exc:
            if exc.status == 404 and allow_404:
                return None
            raise self._error(call, exc.status, exc.data) from None
        except requests.exceptions.RequestException as exc:  # RetryError: urllib3 gave up on 5xx answers
            raise ExternalSystemError(
                system=self.system,
                call=call,
                body=self.redact(truncate(f"{type(exc).__name__}: {exc}")),
                reason="failed after retries" if isinstance(exc, requests.exceptions.RetryError) else "got no answer",
            ) from None
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise self.malformed(call, f"{type(exc).__name__}: {exc}") from None

    def _error(self, call: str, status: int | None, data: Any) -> ExternalSystemError:
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            body = data["message"]
        elif isinstance(data, dict) and set(data) == {"data"}:
            body = str(data["data"])  # PyGithub's wrapping of a body that is not JSON
        else:
            body = "" if data is None else str(data)
        return ExternalSystemError(
            system=self.system, call=call, status=status, body=self.redact(truncate(body)) or None
        )

    def malformed(self, call: str, what: str) -> MalformedResponseError:
        """The (permanent) error for an answer without the shape the API promises."""
        return MalformedResponseError(
            system=self.system, call=call, reason=f"returned a malformed response ({what})"
        )

    @staticmethod
    def _quote_path(path: str) -> str:
        parts = path.strip("/").split("/")
        if not path.strip("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"not a plain repository file path: {path!r}")
        return "/".join(parts)

    # -- reading ------------------------------------------------------------------------------

    def _read(self, path: str, ref: str) -> tuple[str, str] | None:
        path = self._quote_path(path)
        call = self._repo_call("GET", f"/contents/{path}")
        content = self._call(call, lambda: self.repository.get_contents(path, ref=ref), allow_404=True)
        if content is None:
            return None
        if isinstance(content, list) or content.type != "file":
            raise self.malformed(call, f"{path} is not a file")
        sha = content.sha
        if not isinstance(sha, str):
            raise self.malformed(call, "'sha' missing")
        encoding, encoded = content.encoding, content.content
        if encoding == "none" or (encoding is None and not encoded):
            # Above 1 MB the contents API has no inline content: read the blob.
            blob_call = self._repo_call("GET", f"/git/blobs/{sha}")
            blob = self._call(blob_call, lambda: self.repository.get_git_blob(sha))
            encoding, encoded, call = blob.encoding, blob.content, blob_call
        if encoding not in ("base64", None) or not isinstance(encoded, str):
            raise self.malformed(call, f"unexpected encoding {encoding!r}")
        try:
            text = base64.b64decode("".join(encoded.split()), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise self.malformed(call, "content is not base64-encoded UTF-8") from None
        return text, sha

    def get_file(self, path: str) -> tuple[str, str] | None:
        """
        Return ``(text, blob_sha)`` of a file on the branch, or None when it does not exist.

        :param path: path in the repository, e.g. ``train_evidence/smith-immutable-image/x.md``.
        """
        return self._read(path, self.branch)

    def file_at(self, path: str, commit_sha: str) -> str | None:
        """
        Return the file's text as of ``commit_sha``, or None when it did not exist then.

        :param path: path in the repository.
        :param commit_sha: the commit.
        """
        found = self._read(path, commit_sha)
        return found[0] if found else None

    def list_commits(self, path: str, *, limit: int = 30) -> list[dict[str, Any]]:
        """
        Return the commits on the branch that touch ``path``, newest first.

        Each is ``{"sha", "message", "date", "html_url", "commit": {"message"}}`` (the last one in
        the REST shape, for callers that read ``commit["commit"]["message"]``).

        :param path: path in the repository.
        :param limit: at most this many commits.
        """
        path = self._quote_path(path)
        call = self._repo_call("GET", "/commits")

        def read() -> list[dict[str, Any]]:
            commits = []
            for commit in self.repository.get_commits(sha=self.branch, path=path):
                message = commit.commit.message
                if not isinstance(commit.sha, str) or not isinstance(message, str):
                    raise self.malformed(call, "a commit lacks 'sha' or 'message'")
                committer = commit.commit.committer
                date = committer.date.isoformat() if committer is not None and committer.date else None
                commits.append(
                    {
                        "sha": commit.sha,
                        "message": message,
                        "date": date,
                        "html_url": commit.html_url,
                        "commit": {"message": message},
                    }
                )
                if len(commits) >= limit:
                    break
            return commits

        return self._call(call, read)

    def latest_commit_sha(self, path: str) -> str | None:
        """
        Return the sha of the newest commit touching ``path`` (the hash change requests cite), or None.

        :param path: path in the repository.
        """
        commits = self.list_commits(path, limit=1)
        return commits[0]["sha"] if commits else None

    def find_commit(self, path: str, key: str, *, text: str | None = None) -> list[dict[str, Any]]:
        """
        Return the commits touching ``path`` whose message has the trailer ``Rollout-Key: <key>``,
        newest first; with ``text``, only those at which the file is exactly ``text``.

        A commit is the rollout's only with the trailer AND the content it meant to write: a
        person's commit that copies the message (or the trailer) is not taken for ours.

        :param path: path in the repository.
        :param key: the rollout's key, e.g. ``immutable-image/<build>/<step>``.
        :param text: the content the commit must have left the file with.
        """
        found = [c for c in self.list_commits(path, limit=100) if carries_key(c["message"], key)]
        if text is not None:
            found = [c for c in found if self.file_at(path, c["sha"]) == text]
        return found

    # -- writing ------------------------------------------------------------------------------

    def _committer(self) -> dict[str, Any]:
        name, email = self.extras.get("committer_name"), self.extras.get("committer_email")
        return {"committer": InputGitAuthor(name, email)} if name and email else {}

    def _ours(self, path: str, text: str, message: str) -> str | None:
        """The commit that already leaves ``path`` as ``text``: ours by trailer and content when the
        message has a trailer, else the newest commit touching the path."""
        keys = [
            line.strip()[len(KEY_LINE_PREFIX) :].strip()
            for line in message.splitlines()
            if line.strip().startswith(KEY_LINE_PREFIX)
        ]
        for key in keys:
            for commit in self.find_commit(path, key, text=text):
                return commit["sha"]
        return self.latest_commit_sha(path)

    def _write(self, path: str, text: str, message: str, base: str | None) -> dict[str, Any]:
        if base is None:
            return self.repository.create_file(path, message, text, branch=self.branch, **self._committer())
        return self.repository.update_file(path, message, text, base, branch=self.branch, **self._committer())

    def put_file(self, path: str, text: str, message: str, *, sha: str | None = None,
                 create_only: bool = False) -> str:
        """
        Make ``path`` contain ``text`` on the branch and return the commit sha that has it.

        When the file already has exactly this text, nothing is committed and the commit that
        wrote it is returned (the newest with the message's ``Rollout-Key:`` trailer and this
        content, else the newest touching the path). A 409/422 (someone else changed the file,
        or a PUT whose answer was lost landed) is re-read and retried.

        :param path: path in the repository.
        :param text: the full new content.
        :param message: the commit message (end it with a ``Rollout-Key: <key>`` trailer).
        :param sha: the blob sha of the version ``text`` was built from; when given, a file
            changed by someone else since is not overwritten (HTTP 409 is raised).
        :param create_only: only create the file: when it exists (someone else created it first),
            HTTP 409 is raised instead of overwriting it.
        """
        path = self._quote_path(path)
        call = self._repo_call("PUT", f"/contents/{path}")
        write_failed: ExternalSystemError | None = None  # the last PUT's error: only that one is retried

        def attempt() -> str:
            nonlocal write_failed
            current = self.get_file(path)
            if current is not None and current[0] == text:
                self.log.info("%s already has this content: no new commit", path)
                found = self._ours(path, text, message)
                if found is None:
                    raise self.malformed(call, f"{path} exists but no commit touches it")
                return found
            self._refuse(call, path, current, sha=sha, create_only=create_only)
            base = current[1] if current is not None else None
            try:
                result = self._call(call, lambda: self._write(path, text, message, base))
            except ExternalSystemError as exc:
                write_failed = exc
                raise
            commit_sha = getattr(result.get("commit"), "sha", None) if isinstance(result, dict) else None
            if not isinstance(commit_sha, str):
                raise self.malformed(call, "no commit sha in the answer")
            self.log.info("Committed %s as %s", path, commit_sha)
            return commit_sha

        def conflict(exc: BaseException) -> bool:
            # 409/422: changed meanwhile, or our own PUT landed and was sent again; None: no
            # answer at all. Either way: read again before writing again.
            return exc is write_failed and write_failed.status in (409, 422, None)

        def warn(exc: BaseException, wait: float) -> None:
            status = exc.status if isinstance(exc, ExternalSystemError) else None
            self.log.warning("%s: HTTP %s, re-reading %s and retrying in %.1fs", call, status, path, wait)

        return retry_conflicts(
            attempt, retries=self.conflict_retries, conflict=conflict, backoff=self._conflict_backoff, warn=warn
        )

    def _conflict_backoff(self, attempt: int) -> float:
        """Seconds before re-reading after conflict number ``attempt``: extra ``retry_wait``, doubled, at most 30."""
        return min(float(self.extra("retry_wait", DEFAULT_RETRY_WAIT)) * 2 ** (attempt - 1), 30.0)

    def _refuse(
        self, call: str, path: str, current: tuple[str, str] | None, *, sha: str | None, create_only: bool
    ) -> None:
        """Raise 409 (never retried) when the write would overwrite a file it must not: one someone else
        created (``create_only``), or one changed since blob ``sha`` was read."""
        if create_only and current is not None:
            raise ExternalSystemError(
                system=self.system,
                call=call,
                status=409,
                reason=f"refused: {path} exists already (created by someone else)",
            )
        if sha is not None and (current is None or current[1] != sha):
            raise ExternalSystemError(
                system=self.system,
                call=call,
                status=409,
                reason=f"refused: {path} changed since blob {sha} was read",
            )

    # -- links --------------------------------------------------------------------------------

    @property
    def html_base_url(self) -> str:
        """The web base URL (extra ``html_base_url``, else the API URL without ``/api/v3``)."""
        explicit = str(self.extra("html_base_url", "")).rstrip("/")
        if explicit:
            return explicit
        api = self.api_base_url
        if urlsplit(api).netloc == "api.github.com":
            return "https://github.com"
        return api.removesuffix("/api/v3").rstrip("/")

    def blob_url(self, path: str, commit_sha: str) -> str:
        """
        Return the browser link to the file as of ``commit_sha`` (for evidence links in change requests).

        :param path: path in the repository.
        :param commit_sha: the commit.
        """
        quoted = "/".join(quote(part, safe="") for part in self._quote_path(path).split("/"))
        return (
            f"{self.html_base_url}/{quote(self.owner, safe='')}/{quote(self.repo, safe='')}"
            f"/blob/{quote(commit_sha, safe='')}/{quoted}"
        )
