"""GitHub Enterprise: every answer the evidence hook reads (PyGithub's calls), against the GHES
description that GitHub publishes in the npm package `@octokit/openapi`."""

from __future__ import annotations

import base64

import jsonschema
import pytest

from tests.contracts.conftest import load_ghes, validate, validate_component

API = "/github/api/v3"
REPO = "/repos/{owner}/{repo}"
CONTENTS = REPO + "/contents/{path}"
PATH = "train_evidence/smith-immutable-image/immutableimage_contract_evidence.md"


@pytest.fixture(scope="module")
def spec() -> dict:
    return load_ghes()


def url(template: str, **values: str) -> str:
    return API + template.format(**{"owner": "alchemy-conductors", "repo": "team", **values})


def put(sandbox, text: bytes, **extra):
    body = {"message": "Add evidence\n\nRollout-Key: immutable-image/contract/first",
            "content": base64.b64encode(text).decode(), "branch": "master", **extra}
    return sandbox.put(sandbox.base + url(CONTENTS, path=PATH), json=body, timeout=5)


def test_every_github_answer_matches_the_ghes_description(sandbox, spec):
    get = lambda where, **params: sandbox.get(sandbox.base + where, params=params, timeout=5)  # noqa: E731
    validate(spec, "/user", "get", get(url("/user")).json())
    validate(spec, REPO, "get", get(url(REPO)).json())
    missing = get(url(CONTENTS, path=PATH), ref="master")
    assert missing.status_code == 404
    validate(spec, CONTENTS, "get", missing.json(), "404")

    created = put(sandbox, b"# evidence\n")
    assert created.status_code == 201, created.text
    validate(spec, CONTENTS, "put", created.json(), "201")
    file = get(url(CONTENTS, path=PATH), ref="master").json()
    validate(spec, CONTENTS, "get", file)
    updated = put(sandbox, b"# evidence\nmore\n", sha=file["sha"])
    assert updated.status_code == 200
    validate(spec, CONTENTS, "put", updated.json(), "200")

    no_sha = put(sandbox, b"# evidence\nagain\n")
    assert no_sha.status_code == 422
    validate(spec, CONTENTS, "put", no_sha.json(), "422")
    stale = put(sandbox, b"# evidence\nagain\n", sha=file["sha"])
    assert stale.status_code == 409
    # The description's 409 is oneOf(basic-error, repository-rule-violation-error), which any plain
    # GitHub error body matches twice: hold it to basic-error, what a stale sha gets.
    validate_component(spec, "basic-error", stale.json())
    assert set(stale.json()) >= {"message", "documentation_url"}

    commits = get(url(REPO + "/commits"), path=PATH, sha="master").json()
    validate(spec, REPO + "/commits", "get", commits)
    assert len(commits) == 2 and commits[0]["sha"] == updated.json()["commit"]["sha"]
    validate(spec, REPO + "/commits/{ref}", "get", get(url(REPO + "/commits/{ref}", ref=commits[1]["sha"])).json())
    at_first = get(url(CONTENTS, path=PATH), ref=commits[1]["sha"]).json()
    validate(spec, CONTENTS, "get", at_first)
    assert base64.b64decode(at_first["content"]) == b"# evidence\n"

    big = b"y" * (1024 * 1024 + 10)
    sandbox.put(sandbox.base + url(CONTENTS, path="big.log"), timeout=5,
                json={"message": "big", "content": base64.b64encode(big).decode()})
    large = get(url(CONTENTS, path="big.log")).json()
    validate(spec, CONTENTS, "get", large)
    assert large["encoding"] == "none" and large["content"] == ""
    blob = get(url(REPO + "/git/blobs/{file_sha}", file_sha=large["sha"])).json()
    validate(spec, REPO + "/git/blobs/{file_sha}", "get", blob)
    assert base64.b64decode(blob["content"]) == big


@pytest.mark.parametrize("damage", [
    ("file", lambda b: b.pop("_links")),
    ("file", lambda b: b.update(size="13")),
    ("commits", lambda b: b[0].pop("node_id")),
    ("commits", lambda b: b[0]["commit"].pop("tree")),
    ("put", lambda b: b.pop("commit")),
], ids=["file-without-links", "size-not-a-number", "commit-without-node-id", "commit-without-tree",
        "put-answer-without-commit"])
def test_a_wrong_github_answer_fails(sandbox, spec, damage):
    """Negative control: shapes like the pre-issue-10 sandbox's (no _links, no node_id) fail the description."""
    which, wreck = damage
    created = put(sandbox, b"# evidence\n").json()
    bodies = {
        "file": (CONTENTS, "get", "200", sandbox.get(sandbox.base + url(CONTENTS, path=PATH), timeout=5).json()),
        "commits": (REPO + "/commits", "get", "200",
                    sandbox.get(sandbox.base + url(REPO + "/commits"), params={"path": PATH}, timeout=5).json()),
        "put": (CONTENTS, "put", "201", created),
    }
    template, method, status, body = bodies[which]
    validate(spec, template, method, body, status)
    wreck(body)
    with pytest.raises(jsonschema.ValidationError):
        validate(spec, template, method, body, status)


def test_pygithub_reads_and_writes_through_the_sandbox(sandbox):
    """The client the github provider's GithubHook hands out (PyGithub) against the sandbox's GHES API."""
    github = pytest.importorskip("github", reason="PyGithub comes with the github provider (requirements.txt)")
    gh = github.Github(base_url=sandbox.base + API, auth=github.Auth.Token("ghp-sandbox"), retry=None, timeout=5)
    repo = gh.get_repo("alchemy-conductors/team")
    assert repo.default_branch == "master"
    created = repo.create_file(PATH, "Add evidence\n\nRollout-Key: immutable-image/contract/first", "# one\n",
                               branch="master")
    file = repo.get_contents(PATH, ref="master")
    assert file.decoded_content == b"# one\n" and file.sha == created["content"].sha
    with pytest.raises(github.GithubException) as missing_sha:
        repo.create_file(PATH, "again", "# two\n", branch="master")
    assert missing_sha.value.status == 422
    with pytest.raises(github.GithubException) as stale:
        repo.update_file(PATH, "again", "# two\n", "0" * 40, branch="master")
    assert stale.value.status == 409
    updated = repo.update_file(PATH, "Update evidence", "# two\n", file.sha, branch="master")
    commits = list(repo.get_commits(path=PATH, sha="master"))
    assert [c.sha for c in commits] == [updated["commit"].sha, created["commit"].sha]
    assert repo.get_commit(created["commit"].sha).commit.message.endswith("Rollout-Key: immutable-image/contract/first")
    assert repo.get_contents(PATH, ref=created["commit"].sha).decoded_content == b"# one\n"
    big = "z" * (1024 * 1024 + 5)
    repo.create_file("big.log", "big", big, branch="master")
    large = repo.get_contents("big.log")
    assert large.encoding == "none"
    assert len(repo.get_git_blob(large.sha).content) > 1024 * 1024
