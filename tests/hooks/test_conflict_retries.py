"""The conflict policy of the two hooks that re-read and write again (``retry_conflicts``): how often,
how long they wait, what they log, and what they raise when the retries run out.

No server: the re-read-then-write function (LaunchDarkly) or the PUT (GitHub) is scripted, and
``time.sleep`` is replaced, so the waits are read instead of slept.
"""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
from github import GithubException

from image_rollout.hooks._http import ExternalSystemError, ResponseLostError
from image_rollout.hooks.flags import ApprovalRequired, FlagsHook
from image_rollout.hooks.github import GitHubEvidenceHook

CALL = "POST /api/v2/projects/default/flags/worker-image/environments/production/approval-requests"


def conflict(n: int = 0) -> ExternalSystemError:
    return ExternalSystemError(system="launchdarkly", call=CALL, status=409, body=f"conflict {n}")


def lost(n: int = 0) -> ResponseLostError:
    return ResponseLostError(system="launchdarkly", call=CALL, body=f"lost {n}", reason="got no answer")


@pytest.fixture
def sleeps():
    with mock.patch("time.sleep") as sleep:
        yield sleep


def waits(sleep) -> list[float]:
    return [c.args[0] for c in sleep.call_args_list]


# -- LaunchDarkly -------------------------------------------------------------------------------
@pytest.fixture
def flags():
    hook = FlagsHook(retry_wait=0.5, conflict_retries=3)
    hook._extras = {}  # no connection needed: every setting has its default
    with mock.patch.object(FlagsHook, "log", new_callable=mock.PropertyMock) as log:
        yield hook, log.return_value


def scripted(*outcomes):
    """An attempt function that raises or returns ``outcomes`` in turn."""
    return mock.Mock(side_effect=list(outcomes))


def test_flags_409_is_retried_conflict_retries_times_with_doubling_waits_then_raised(flags, sleeps):
    hook, log = flags
    errors = [conflict(n) for n in range(4)]
    attempt = scripted(*errors)
    with pytest.raises(ExternalSystemError) as info:
        hook._with_conflict_retry("point rule dev-south", attempt)
    assert info.value is errors[-1]
    assert attempt.call_count == 4
    assert waits(sleeps) == [0.5, 1.0, 2.0]
    assert [c.args for c in log.warning.call_args_list] == [
        ("%s: conflict (HTTP 409), re-reading and retrying in %.1fs", "point rule dev-south", wait)
        for wait in (0.5, 1.0, 2.0)
    ]


def test_flags_waits_are_capped_by_retry_max_wait(flags, sleeps):
    hook, _ = flags
    hook.conflict_retries = 7
    with pytest.raises(ExternalSystemError):
        hook._with_conflict_retry("x", scripted(*[conflict(n) for n in range(8)]))
    assert waits(sleeps) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]


def test_flags_a_conflict_then_success_returns_the_second_attempt(flags, sleeps):
    hook, log = flags
    attempt = scripted(conflict(), lost(), "done")
    assert hook._with_conflict_retry("apply cr-1", attempt) == "done"
    assert attempt.call_count == 3 and waits(sleeps) == [0.5, 1.0]
    assert [c.args for c in log.warning.call_args_list] == [
        ("%s: conflict (HTTP 409), re-reading and retrying in %.1fs", "apply cr-1", 0.5),
        ("%s: the answer to a write was lost, looking again in %.1fs", "apply cr-1", 1.0),
    ]


def test_flags_a_lost_answer_is_looked_at_again_until_the_retries_run_out(flags, sleeps):
    hook, log = flags
    errors = [lost(n) for n in range(4)]
    with pytest.raises(ResponseLostError) as info:
        hook._with_conflict_retry("change request for ap-south", scripted(*errors))
    assert info.value is errors[-1] and waits(sleeps) == [0.5, 1.0, 2.0]
    assert all("was lost" in c.args[0] for c in log.warning.call_args_list)


def test_flags_without_after_lost_a_lost_answer_is_raised_at_once(flags, sleeps):
    hook, log = flags
    error = lost()
    attempt = scripted(error, "never")
    with pytest.raises(ResponseLostError) as info:
        hook._with_conflict_retry("review cr-1", attempt, after_lost=False)
    assert info.value is error and attempt.call_count == 1
    sleeps.assert_not_called()
    log.warning.assert_not_called()


@pytest.mark.parametrize("error", [
    ExternalSystemError(system="launchdarkly", call=CALL, status=500, reason="failed after 5 attempts"),
    ExternalSystemError(system="launchdarkly", call=CALL, status=400),
    ApprovalRequired(system="launchdarkly", call=CALL, status=405),
    ValueError("not a conflict"),
])
def test_flags_anything_but_a_conflict_is_raised_at_once(flags, sleeps, error):
    hook, log = flags
    attempt = scripted(error, "never")
    with pytest.raises(type(error)) as info:
        hook._with_conflict_retry("x", attempt)
    assert info.value is error and attempt.call_count == 1
    sleeps.assert_not_called()
    log.warning.assert_not_called()


# -- GitHub ------------------------------------------------------------------------------------
PATH = "train_evidence/smith-immutable-image/533-1251-880-20211101.md"
PUT = f"PUT /repos/alchemy-conductors/team/contents/{PATH}"


@pytest.fixture
def github():
    hook = GitHubEvidenceHook(conflict_retries=2)
    hook.__dict__["connection"] = SimpleNamespace(password="gh-token", extra_dejson={"retry_wait": 0.5})
    hook.get_file = mock.Mock(return_value=("old text", "blob-old"))
    hook._write = mock.Mock()
    with mock.patch.object(GitHubEvidenceHook, "log", new_callable=mock.PropertyMock) as log:
        yield hook, log.return_value


def committed(sha: str) -> dict:
    return {"commit": SimpleNamespace(sha=sha), "content": SimpleNamespace(sha="blob-new")}


@pytest.mark.parametrize("status", [409, 422])
def test_github_a_racing_put_is_re_read_and_retried_then_raised(github, sleeps, status):
    hook, log = github
    hook._write.side_effect = [GithubException(status, {"message": f"conflict {n}"}) for n in range(3)]
    with pytest.raises(ExternalSystemError) as info:
        hook.put_file(PATH, "new text", "evidence")
    assert info.value.status == status and info.value.call == PUT and info.value.body == "conflict 2"
    assert hook._write.call_count == 3 and hook.get_file.call_count == 3
    assert waits(sleeps) == [0.5, 1.0]
    assert [c.args for c in log.warning.call_args_list] == [
        ("%s: HTTP %s, re-reading %s and retrying in %.1fs", PUT, status, PATH, wait) for wait in (0.5, 1.0)
    ]


def test_github_a_put_without_an_answer_is_re_read_then_the_retry_commits(github, sleeps):
    import requests

    hook, _ = github
    hook._write.side_effect = [requests.exceptions.ConnectionError("reset"), committed("c0ffee")]
    assert hook.put_file(PATH, "new text", "evidence") == "c0ffee"
    assert hook.get_file.call_count == 2 and waits(sleeps) == [0.5]
    assert hook._write.call_args_list[-1].args == (PATH, "new text", "evidence", "blob-old")


def test_github_waits_double_from_the_retry_wait_extra_up_to_30s(github, sleeps):
    hook, _ = github
    hook.conflict_retries = 8
    hook._write.side_effect = [GithubException(409, {"message": "conflict"}) for _ in range(9)]
    with pytest.raises(ExternalSystemError):
        hook.put_file(PATH, "new text", "evidence")
    assert waits(sleeps) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


@pytest.mark.parametrize("kwargs, reason", [
    ({"sha": "blob-older"}, "changed since blob blob-older was read"),
    ({"create_only": True}, "exists already"),
])
def test_github_a_refused_overwrite_is_a_409_never_retried(github, sleeps, kwargs, reason):
    hook, log = github
    with pytest.raises(ExternalSystemError) as info:
        hook.put_file(PATH, "new text", "evidence", **kwargs)
    assert info.value.status == 409 and reason in str(info.value)
    hook._write.assert_not_called()
    assert hook.get_file.call_count == 1
    sleeps.assert_not_called()
    log.warning.assert_not_called()


def test_github_only_the_put_s_own_error_is_retried(github, sleeps):
    hook, _ = github
    hook.get_file.side_effect = ExternalSystemError(system="github", call="GET x", body="reset")  # status None
    with pytest.raises(ExternalSystemError):
        hook.put_file(PATH, "new text", "evidence")
    assert hook.get_file.call_count == 1
    sleeps.assert_not_called()


def test_github_a_403_is_raised_at_once(github, sleeps):
    hook, _ = github
    hook._write.side_effect = GithubException(403, {"message": "forbidden"})
    with pytest.raises(ExternalSystemError) as info:
        hook.put_file(PATH, "new text", "evidence")
    assert info.value.status == 403 and hook._write.call_count == 1
    sleeps.assert_not_called()
