"""GitHubEvidenceHook (through the github provider) against a strict GitHub: 422/409, >1 MB, lost answers, trailers."""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from image_rollout.hooks._http import ExternalSystemError
from image_rollout.hooks.github import GitHubEvidenceHook
from image_rollout.preconditions import carries_key, key_line

PATH = "train_evidence/smith-immutable-image/immutableimage_533-1251-880-20211101_evidence.md"
KEY = "immutable-image/533-1251-880-20211101/initial"
REPO = "/api/v3/repos/alchemy-conductors/team"


def _blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeGitHub:
    """One repository, one branch; GitHub's answers for the contents, commits and blobs APIs."""

    def __init__(self, *, inline_limit: int = 1024 * 1024) -> None:
        self.commits: list[dict] = []  # oldest first
        self.blobs: dict[str, bytes] = {}
        self.inline_limit = inline_limit
        self.lose_next_put = False
        self.puts: list[dict] = []

    def files_at(self, ref: str) -> dict[str, bytes] | None:
        files: dict[str, bytes] = {}
        commits = self.commits
        if ref != "master":
            index = next((i for i, c in enumerate(commits) if c["sha"] == ref), None)
            if index is None:
                return None
            commits = commits[: index + 1]
        for commit in commits:
            files[commit["path"]] = commit["data"]
        return files

    def commit(self, path: str, data: bytes, message: str) -> dict:
        sha = hashlib.sha1(f"{len(self.commits)}/{path}/{message}".encode() + data).hexdigest()
        self.blobs[_blob_sha(data)] = data
        commit = {"sha": sha, "path": path, "data": data, "message": message}
        self.commits.append(commit)
        return commit

    def _json(self, status, value):
        return status, {"Content-Type": "application/json"}, json.dumps(value).encode()

    def _content(self, path: str, data: bytes) -> dict:
        inline = len(data) <= self.inline_limit
        return {
            "type": "file",
            "encoding": "base64" if inline else "none",
            "content": base64.encodebytes(data).decode() if inline else "",
            "size": len(data),
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": _blob_sha(data),
            "url": f"http://gh.example{REPO}/contents/{path}",
            "html_url": f"http://gh.example/alchemy-conductors/team/blob/master/{path}",
            "git_url": f"http://gh.example{REPO}/git/blobs/{_blob_sha(data)}",
            "download_url": None,
            "_links": {},
        }

    def _commit_json(self, commit: dict) -> dict:
        person = {"name": "rollout", "email": "rollout@example.com", "date": "2026-11-25T00:00:00Z"}
        return {
            "sha": commit["sha"],
            "url": f"http://gh.example{REPO}/commits/{commit['sha']}",
            "html_url": f"http://gh.example/alchemy-conductors/team/commit/{commit['sha']}",
            "commit": {"message": commit["message"], "author": person, "committer": person},
            "parents": [],
        }

    def respond(self, method, target, headers, body):
        url = urlsplit(target)
        path = unquote(url.path.removeprefix("/github"))
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if not path.startswith(REPO):
            return self._json(404, {"message": "Not Found"})
        rest = path[len(REPO) :]
        if rest.startswith("/contents/") and method == "GET":
            files = self.files_at(query.get("ref", "master"))
            file_path = rest[len("/contents/") :]
            if files is None:
                return self._json(404, {"message": f"No commit found for the ref {query.get('ref')}"})
            if file_path not in files:
                return self._json(404, {"message": "Not Found"})
            return self._json(200, self._content(file_path, files[file_path]))
        if rest.startswith("/contents/") and method == "PUT":
            file_path = rest[len("/contents/") :]
            payload = json.loads(body)
            self.puts.append(payload)
            current = self.files_at("master").get(file_path)
            if current is not None and "sha" not in payload:
                return self._json(422, {"message": 'Invalid request.\n\n"sha" wasn\'t supplied.'})
            if current is not None and payload["sha"] != _blob_sha(current):
                return self._json(409, {"message": f"{file_path} does not match {payload['sha']}"})
            data = base64.b64decode(payload["content"])
            commit = self.commit(file_path, data, payload["message"])
            if self.lose_next_put:
                self.lose_next_put = False
                return None
            return self._json(
                201 if current is None else 200,
                {"content": self._content(file_path, data), "commit": self._commit_json(commit)},
            )
        if rest == "/commits" and method == "GET":
            commits = [c for c in reversed(self.commits) if c["path"] == query.get("path")]
            return self._json(200, [self._commit_json(c) for c in commits])
        if rest.startswith("/git/blobs/") and method == "GET":
            sha = rest[len("/git/blobs/") :]
            data = self.blobs[sha]
            return self._json(
                200,
                {
                    "sha": sha,
                    "size": len(data),
                    "encoding": "base64",
                    "content": base64.encodebytes(data).decode(),
                    "url": f"http://gh.example{REPO}/git/blobs/{sha}",
                },
            )
        return self._json(404, {"message": "Not Found"})


@pytest.fixture
def fake_github(stub_server, stub_connection):
    fake = FakeGitHub(inline_limit=2000)
    stub_connection(
        "github_strict",
        f"{stub_server(fake.respond)}/github/api/v3",
        conn_type="github",
        password="gh-token-123456",
        extra={
            "owner": "alchemy-conductors",
            "repo": "team",
            "branch": "master",
            "retries": 2,
            "retry_wait": 0.01,
            "timeout": 5,
            "seconds_between_requests": 0,
            "seconds_between_writes": 0,
        },
    )
    return fake, GitHubEvidenceHook(github_conn_id="github_strict")


def message(text: str, key: str = KEY) -> str:
    return f"{text}\n\n{key_line(key)}"


def test_goes_through_the_providers_github_hook(fake_github, monkeypatch):
    from airflow.providers.github.hooks import github as provider

    made = []
    original = provider.GithubHook.get_conn

    def spy(self):
        made.append(self.github_conn_id)
        return original(self)

    monkeypatch.setattr(provider.GithubHook, "get_conn", spy)
    fake, github = fake_github
    assert github.get_file(PATH) is None
    assert made and set(made) == {"github_strict"}


def test_update_after_create_sends_the_sha_and_survives_a_stale_one(fake_github):
    fake, github = fake_github
    first = github.put_file(PATH, "v1\n", message("first"))
    fake.commit(PATH, b"someone else\n", "manual edit")  # the blob sha we would send is stale now
    second = github.put_file(PATH, "v2\n", message("second", KEY + "-2"))
    assert second != first
    assert github.get_file(PATH)[0] == "v2\n"
    assert "sha" not in fake.puts[0] and "sha" in fake.puts[1]


def test_put_with_a_base_sha_never_overwrites_another_change(fake_github):
    fake, github = fake_github
    github.put_file(PATH, "v1\n", message("first"))
    base = github.get_file(PATH)[1]
    fake.commit(PATH, b"someone else\n", "manual edit")
    with pytest.raises(ExternalSystemError) as info:
        github.put_file(PATH, "v1\nmore\n", message("second"), sha=base)
    assert info.value.status == 409
    assert github.get_file(PATH)[0] == "someone else\n"


def test_files_above_the_inline_limit_are_read_from_the_blob(fake_github):
    fake, github = fake_github
    big = "x" * 5000 + "\n"
    sha = github.put_file(PATH, big, message("big"))
    text, blob = github.get_file(PATH)
    assert text == big
    assert github.file_at(PATH, sha) == big
    assert github.put_file(PATH, big, message("big")) == sha, "same content: no new commit"
    assert len(fake.commits) == 1


def test_lost_answer_to_a_put_makes_one_commit(fake_github):
    fake, github = fake_github
    github.put_file(PATH, "v1\n", message("first"))
    fake.lose_next_put = True
    sha = github.put_file(PATH, "v2\n", message("second", KEY + "-stage"))
    assert len(fake.commits) == 2
    assert sha == fake.commits[-1]["sha"]


def test_lost_answer_to_a_create_makes_one_commit(fake_github):
    fake, github = fake_github
    fake.lose_next_put = True
    sha = github.put_file(PATH, "v1\n", message("first"))
    assert [c["sha"] for c in fake.commits] == [sha]


def test_a_person_s_commit_with_our_message_is_not_ours(fake_github):
    fake, github = fake_github
    fake.commit(PATH, b"previous build's ids\n", message("Add evidence"))  # same message and trailer
    assert [c["sha"] for c in github.find_commit(PATH, KEY)] == [fake.commits[0]["sha"]]
    assert github.find_commit(PATH, KEY, text="new build's ids\n") == []
    sha = github.put_file(PATH, "new build's ids\n", message("Add evidence"))
    assert sha != fake.commits[0]["sha"]
    assert [c["sha"] for c in github.find_commit(PATH, KEY, text="new build's ids\n")] == [sha]
    assert github.file_at(PATH, fake.commits[0]["sha"]) == "previous build's ids\n"


def test_list_commits_shape(fake_github):
    fake, github = fake_github
    sha = github.put_file(PATH, "v1\n", message("first"))
    (commit,) = github.list_commits(PATH)
    assert commit["sha"] == sha
    assert commit["message"] == commit["commit"]["message"] == message("first")
    assert github.latest_commit_sha(PATH) == sha


def test_trailer_must_be_its_own_line():
    assert carries_key(message("x"), KEY)
    assert not carries_key(f"x Rollout-Key: {KEY}", KEY)
    assert not carries_key(message("x", KEY + "/more"), KEY)


def test_blob_url_for_enterprise_and_github_com(fake_github, stub_connection):
    fake, github = fake_github
    assert github.blob_url(PATH, "abc").endswith(f"/github/alchemy-conductors/team/blob/abc/{PATH}")
    stub_connection("github_com", "", conn_type="github", password="t", extra={"owner": "o", "repo": "r"})
    assert GitHubEvidenceHook(github_conn_id="github_com").blob_url("a b.md", "abc") == (
        "https://github.com/o/r/blob/abc/a%20b.md"
    )
