"""The payloads the rollout's tasks pass each other (XCom ``return_value`` and ``decision``; JSON), as types.

For reading and for type checkers: the modules on the DAG-parse path import them only under
``TYPE_CHECKING`` (a ``TypedDict`` class costs a parse about as much as an operator class).
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

ImageMap = dict[str, str]
"""One image id per :data:`image_rollout.contracts.IMAGE_KEYS` entry."""


class BuildRecord(TypedDict):
    """The build a task writes: what the rollout verified, or the backout's record of it."""

    name: str
    images: ImageMap
    console_url: str
    console_text: str
    number: NotRequired[int | None]
    url: NotRequired[str | None]


class VerifiedBuild(BuildRecord):
    """``build_verification.verify_build``: the Jenkins build, checked, and the rules before the rollout."""

    job: str
    dry_run: bool
    verified_at: str
    approval_settings: dict | None
    #: target -> the image map its rule served at verification
    baseline: dict[str, ImageMap | None]


class NoopRerun(TypedDict):
    """``verify_build`` of a build whose rollout already finished: nothing is written."""

    name: str
    noop: dict
    dry_run: bool


class Promotion(TypedDict):
    """One target's promotion (a promote or apply task; a list of them when the task is mapped)."""

    target: str
    #: False when the target already served the build from our own write
    changed: bool
    previous: ImageMap | None
    new: ImageMap
    #: the system's time (LaunchDarkly ``appliedDate``) when there is one: bakes and soaks count from it
    promoted_at: str
    request_id: NotRequired[str | None]
    evidence_sha: NotRequired[str | None]


class FiledChangeRequest(TypedDict):
    """A filed train (``file_change_request_<stage>``), or the target already served the build."""

    target: str
    request_id: str | None
    previous: ImageMap | None
    already_serving: bool
    evidence_sha: NotRequired[str]
    evidence_link: NotRequired[str]
    review_status: NotRequired[str | None]


class GateDecision(TypedDict):
    """A gate's verdict (XCom key ``decision``): why it passed or failed, for the rollback and the page."""

    verdict: Literal["pass", "fail"]
    reason: str
    figures: NotRequired[dict]
    decided_by: NotRequired[str]
    decided_at: NotRequired[str]


class SoakVerdict(GateDecision):
    """The canary soak's ``return_value`` (and ``decision``) when it passed."""

    region: str
    build: str
    image_map: ImageMap
    since: str


class EvidenceCommit(TypedDict):
    """An evidence commit (``commit_evidence``, ``update_evidence``)."""

    path: str
    sha: str
    url: str
    mode: Literal["initial", "stage_reloads"]
