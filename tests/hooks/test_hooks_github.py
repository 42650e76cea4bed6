"""GitHubEvidenceHook against the sandbox's GitHub Enterprise: idempotent evidence commits."""

from __future__ import annotations

import re

import pytest

from image_rollout.hooks._http import ExternalSystemError
from image_rollout.hooks.github import GitHubEvidenceHook

PATH = "train_evidence/smith-immutable-image/immutableimage_533-1251-880-20211101_evidence.md"
SHA = re.compile(r"^[0-9a-f]{40}$")


@pytest.fixture
def github(sandbox) -> GitHubEvidenceHook:
    return GitHubEvidenceHook()


def commits_of(sandbox, path: str = PATH) -> list[dict]:
    evidence = sandbox.state()["evidence"]
    commits = evidence.get("commits", [])
    return [c for c in commits if c.get("path", path) == path]


def test_missing_file_is_none(github):
    assert github.get_file(PATH) is None
    assert github.latest_commit_sha(PATH) is None
    assert github.list_commits(PATH) == []


def test_put_file_creates_then_is_idempotent(github, sandbox):
    text = "### Evidence for promotion of immutable image build `immutableimage_533-1251-880-20211101-prod`\n"
    sha = github.put_file(PATH, text, "Add evidence for 533-1251-880-20211101")
    assert SHA.match(sha)
    content, blob_sha = github.get_file(PATH)
    assert content == text
    assert blob_sha and blob_sha != sha
    assert github.latest_commit_sha(PATH) == sha
    puts = sandbox.calls("github PUT")

    assert github.put_file(PATH, text, "retried task") == sha
    assert sandbox.calls("github PUT") == puts, "identical content: no PUT at all"
    assert len(commits_of(sandbox)) == 1


def test_update_makes_one_new_commit(github, sandbox):
    first = github.put_file(PATH, "v1\n", "first")
    second = github.put_file(PATH, "v1\nreloads: CHG1234567\n", "second")
    assert second != first
    assert github.get_file(PATH)[0] == "v1\nreloads: CHG1234567\n"
    commits = github.list_commits(PATH)
    assert [c["sha"] for c in commits] == [second, first], "newest first"
    assert github.latest_commit_sha(PATH) == second
    assert len(commits_of(sandbox)) == 2
    assert commits_of(sandbox)[-1]["content"] == "v1\nreloads: CHG1234567\n"


def test_conflict_is_re_read_and_retried(github, sandbox):
    github.put_file(PATH, "v1\n", "first")
    sandbox.faults("github_conflict")
    sha = github.put_file(PATH, "v2\n", "second")
    assert github.get_file(PATH)[0] == "v2\n"
    assert github.latest_commit_sha(PATH) == sha
    assert len(commits_of(sandbox)) == 2


def test_retries_recover_from_github_5xx(github, sandbox):
    sandbox.faults("github_5xx")
    sha = github.put_file(PATH, "through 502s\n", "evidence")
    assert github.latest_commit_sha(PATH) == sha
    assert len(commits_of(sandbox)) == 1


def test_blob_url_points_at_the_commit(github, sandbox):
    sha = github.put_file(PATH, "v1\n", "first")
    assert (
        github.blob_url(PATH, sha) == f"{sandbox.base_url}/github/alchemy-conductors/team/blob/{sha}/{PATH}"
    )


def test_paths_cannot_escape_the_contents_api(github):
    for bad in ("../outside", "a/./b", "a//b", ""):
        with pytest.raises(ValueError):
            github.put_file(bad, "x", "bad path")


def test_a_4xx_names_system_call_and_status(sandbox, stub_connection, secrets):
    stub_connection(
        "github_wrong_branch",
        f"{sandbox.base_url}/github/api/v3",
        conn_type="github",
        password="sandbox-secret-github",
        extra={"branch": "no-such-branch", "retries": 1, "retry_wait": 0.01},
    )
    with pytest.raises(ExternalSystemError) as info:
        GitHubEvidenceHook(github_conn_id="github_wrong_branch").put_file(PATH, "x", "to a missing branch")
    error = info.value
    assert error.system == "github"
    assert error.status == 404
    assert error.call == f"PUT /repos/alchemy-conductors/team/contents/{PATH}"
    assert str(error).startswith(
        f"github PUT /repos/alchemy-conductors/team/contents/{PATH} failed: HTTP 404"
    )
    assert not any(secret in str(error) for secret in secrets)
