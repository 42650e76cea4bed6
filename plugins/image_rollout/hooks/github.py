"""GitHub Enterprise: the promotion evidence file in the Conductors team repository."""

from __future__ import annotations

import base64
import binascii
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from image_rollout.hooks._http import ExternalSystemError, HeaderTokenAuth, RolloutHttpHook

if TYPE_CHECKING:
    from airflow.sdk import Connection


class GitHubEvidenceHook(RolloutHttpHook):
    """
    Read and commit the evidence file of a promotion via the GitHub REST v3 contents API.

    Change requests cite the evidence file by link and commit hash, so every commit must be
    deliberate: writing identical content makes no new commit (a retried task gets the same
    hash back), and a concurrent update (409) is re-read and retried.

    Connection: host = GitHub Enterprise base URL (API under ``/api/v3``), password = token
    (sent as ``Authorization: token <t>``); extras ``owner`` (default ``alchemy-conductors``),
    ``repo`` (``team``), ``branch`` (``master``), optional ``api_prefix`` (``/api/v3``),
    ``html_base_url`` (default: the host), ``committer_name`` / ``committer_email``.

    :param github_conn_id: the GitHub connection.
    :param timeout: seconds per request; default from the connection extra ``timeout``, else 30.
    :param retries: retries on 5xx, connection errors and timeouts; default from extra ``retries``.
    :param retry_wait: first backoff in seconds (doubles); default from extra ``retry_wait``.
    :param conflict_retries: how often to re-read and retry a PUT answered with 409.
    """

    conn_name_attr = "github_conn_id"
    default_conn_name = "github_evidence_default"
    conn_type = "http"
    hook_name = "GitHub Enterprise (evidence)"
    system = "github"
    hook_extras = frozenset(
        {"owner", "repo", "branch", "api_prefix", "html_base_url", "committer_name", "committer_email"}
    )

    def __init__(
        self,
        *,
        github_conn_id: str = default_conn_name,
        timeout: float | None = None,
        retries: int | None = None,
        retry_wait: float | None = None,
        conflict_retries: int = 3,
    ) -> None:
        super().__init__(conn_id=github_conn_id, timeout=timeout, retries=retries, retry_wait=retry_wait)
        self.github_conn_id = github_conn_id
        self.conflict_retries = conflict_retries

    def auth_for(self, connection: Connection) -> HeaderTokenAuth | None:
        """Send the token as ``Authorization: token <t>``."""
        return HeaderTokenAuth(f"token {connection.password}") if connection.password else None

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

    @property
    def _repo_path(self) -> str:
        prefix = "/" + str(self.extra("api_prefix", "/api/v3")).strip("/")
        return f"{prefix.rstrip('/')}/repos/{quote(self.owner, safe='')}/{quote(self.repo, safe='')}"

    @staticmethod
    def _quote_path(path: str) -> str:
        parts = path.strip("/").split("/")
        if not path.strip("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"not a plain repository file path: {path!r}")
        return "/".join(quote(part, safe="") for part in parts)

    def get_file(self, path: str) -> tuple[str, str] | None:
        """
        Return ``(text, blob_sha)`` of a file on the branch, or None when it does not exist.

        :param path: path in the repository, e.g. ``train_evidence/smith-immutable-image/x.md``.
        """
        endpoint = f"{self._repo_path}/contents/{self._quote_path(path)}"
        call = f"GET {endpoint}"
        response = self.request("GET", endpoint, params={"ref": self.branch}, allowed_status=(404,))
        if response.status_code == 404:
            return None
        content = self.decode_json(response, call)
        if content.get("type", "file") != "file":
            raise self.malformed(call, f"{path} is a {content.get('type')}, not a file")
        encoded = self.require(content, "content", str, call)
        sha = self.require(content, "sha", str, call)
        if content.get("encoding", "base64") != "base64":
            raise self.malformed(call, f"unexpected encoding {content.get('encoding')!r}")
        try:
            text = base64.b64decode("".join(encoded.split()), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise self.malformed(call, "content is not base64-encoded UTF-8") from None
        return text, sha

    def list_commits(self, path: str, *, limit: int = 30) -> list[dict[str, Any]]:
        """
        Return the commits on the branch that touch ``path``, newest first.

        :param path: path in the repository.
        :param limit: at most this many commits (one page, up to 100).
        """
        endpoint = f"{self._repo_path}/commits"
        commits = self.request_json(
            "GET",
            endpoint,
            params={"path": path.strip("/"), "sha": self.branch, "per_page": max(1, min(limit, 100))},
            expect=list,
        )
        if not all(isinstance(commit, dict) and isinstance(commit.get("sha"), str) for commit in commits):
            raise self.malformed(f"GET {endpoint}", "a commit lacks 'sha'")
        return commits[:limit]

    def latest_commit_sha(self, path: str) -> str | None:
        """
        Return the sha of the newest commit touching ``path`` (the hash change requests cite), or None.

        :param path: path in the repository.
        """
        commits = self.list_commits(path, limit=1)
        return commits[0]["sha"] if commits else None

    def _latest_commit_or_fail(self, path: str, call: str) -> str:
        sha = self.latest_commit_sha(path)
        if sha is None:
            raise self.malformed(call, f"{path} exists but no commit touches it")
        return sha

    def put_file(self, path: str, text: str, message: str) -> str:
        """
        Make ``path`` contain ``text`` on the branch and return the commit sha that has it.

        When the file already has exactly this text, nothing is committed and the sha of the
        latest commit touching the path is returned. A 409 (someone else updated the file)
        is re-read and retried.

        :param path: path in the repository.
        :param text: the full new content.
        :param message: the commit message.
        """
        endpoint = f"{self._repo_path}/contents/{self._quote_path(path)}"
        call = f"PUT {endpoint}"
        committer = {
            key: self.extras[f"committer_{key}"]
            for key in ("name", "email")
            if self.extras.get(f"committer_{key}")
        }
        for attempt in range(1, self.conflict_retries + 2):
            current = self.get_file(path)
            if current is not None and current[0] == text:
                self.log.info("%s already has this content: no new commit", path)
                return self._latest_commit_or_fail(path, call)
            body: dict[str, Any] = {
                "message": message,
                "content": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                "branch": self.branch,
            }
            if current is not None:
                body["sha"] = current[1]
            if len(committer) == 2:
                body["committer"] = committer
            try:
                result = self.request_json("PUT", endpoint, json=body)
            except ExternalSystemError as exc:
                if exc.status not in (409, 422) or attempt > self.conflict_retries:
                    raise
                wait = self.backoff(attempt)
                self.log.warning(
                    "%s: HTTP %s, re-reading %s and retrying in %.1fs", call, exc.status, path, wait
                )
                time.sleep(wait)
                continue
            commit = self.require(result, "commit", dict, call)
            sha = self.require(commit, "sha", str, call)
            self.log.info("Committed %s as %s", path, sha)
            return sha
        raise AssertionError("unreachable")

    def blob_url(self, path: str, commit_sha: str) -> str:
        """
        Return the browser link to the file as of ``commit_sha`` (for evidence links in change requests).

        :param path: path in the repository.
        :param commit_sha: the commit.
        """
        base = str(self.extra("html_base_url", "")).rstrip("/")
        if not base:
            base = self.url_from_endpoint("")
        return (
            f"{base.rstrip('/')}/{quote(self.owner, safe='')}/{quote(self.repo, safe='')}"
            f"/blob/{quote(commit_sha, safe='')}/{self._quote_path(path)}"
        )
