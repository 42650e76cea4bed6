"""LaunchDarkly (behind Razee flags): the ``worker-image`` flag and its change requests ("trains")."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from image_rollout.hooks._http import (
    ExternalSystemError,
    HeaderTokenAuth,
    ResponseLostError,
    RolloutHttpHook,
    retry_conflicts,
)
from image_rollout.preconditions import carries_key, key_line, rollout_key

if TYPE_CHECKING:
    from airflow.sdk import Connection
    from requests import Response

T = TypeVar("T")

SEMANTIC_PATCH = "application/json; domain-model=launchdarkly.semanticpatch"
REVIEW_KINDS = frozenset({"approve", "decline", "comment"})
#: The REST API version every request asks for, so response shapes do not follow the token's default.
LD_API_VERSION = "20240415"
class ApprovalRequired(ExternalSystemError):
    """
    LaunchDarkly refused a direct flag change (HTTP 405): the environment requires approval.

    The change has to go through an approval request (:meth:`FlagsHook.create_change_request`).
    """


def normalize_image_map(image_map: Mapping[str, Any]) -> dict[str, str]:
    """Return the image map with string keys and values, so ``8935101`` equals ``"8935101"``."""
    return {str(key): str(value) for key, value in image_map.items()}


def describe_image_map(image_map: Mapping[str, Any]) -> str:
    """Return a short readable name for an image map, e.g. ``dev=8935101 prod=8935154``."""
    return " ".join(f"{key}={value}" for key, value in sorted(normalize_image_map(image_map).items()))


class FlagsHook(RolloutHttpHook):
    """
    Read and promote the ``worker-image`` flag in LaunchDarkly (what Razee flags edits).

    Each rule of the flag is one rollout target and serves a variation whose value is the
    image map ``{"dev", "prod", "prodfr2", "stage"}``; promoting a target points its rule at
    the new build's map. Direct writes use semantic patches; environments that need approval
    go through approval requests (the runbook's change-request "trains"). Writes read first
    and skip what is already done, and a 409 conflict is re-read and retried.

    Connection: password = API access token (sent as ``Authorization: <token>``); extras
    ``project_key`` (default ``default``), ``environment_key`` (``production``) and
    ``flag_key`` (``worker-image``).

    :param launchdarkly_conn_id: the LaunchDarkly connection.
    :param timeout: seconds per request; default from the connection extra ``timeout``, else 30.
    :param retries: retries on 5xx, connection errors and timeouts; default from extra ``retries``.
    :param retry_wait: first backoff in seconds (doubles); default from extra ``retry_wait``.
    :param conflict_retries: how often to re-read and retry a write answered with 409.
    """

    conn_name_attr = "launchdarkly_conn_id"
    default_conn_name = "launchdarkly_default"
    conn_type = "http"
    hook_name = "LaunchDarkly (Razee flags)"
    system = "launchdarkly"
    hook_extras = frozenset({"project_key", "environment_key", "flag_key"})

    def __init__(
        self,
        *,
        launchdarkly_conn_id: str = default_conn_name,
        timeout: float | None = None,
        retries: int | None = None,
        retry_wait: float | None = None,
        conflict_retries: int = 3,
    ) -> None:
        super().__init__(
            conn_id=launchdarkly_conn_id, timeout=timeout, retries=retries, retry_wait=retry_wait
        )
        self.launchdarkly_conn_id = launchdarkly_conn_id
        self.conflict_retries = conflict_retries

    def auth_for(self, connection: Connection) -> HeaderTokenAuth | None:
        """Send the API token as the bare ``Authorization`` header, as LaunchDarkly expects."""
        return HeaderTokenAuth(connection.password) if connection.password else None

    def request(
        self, method: str, path: str, *, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> Response:
        """Send a request (see :meth:`RolloutHttpHook.request`) with ``LD-API-Version: 20240415``."""
        return super().request(
            method, path, headers={"LD-API-Version": LD_API_VERSION, **(headers or {})}, **kwargs
        )

    @property
    def project_key(self) -> str:
        """The LaunchDarkly project (extra ``project_key``)."""
        return str(self.extra("project_key", "default"))

    @property
    def environment_key(self) -> str:
        """The environment whose rules are promoted (extra ``environment_key``)."""
        return str(self.extra("environment_key", "production"))

    @property
    def flag_key(self) -> str:
        """The flag that holds the image maps (extra ``flag_key``)."""
        return str(self.extra("flag_key", "worker-image"))

    @property
    def _flag_path(self) -> str:
        return f"/api/v2/flags/{quote(self.project_key, safe='')}/{quote(self.flag_key, safe='')}"

    @property
    def _environment_path(self) -> str:
        return (
            f"/api/v2/projects/{quote(self.project_key, safe='')}"
            f"/environments/{quote(self.environment_key, safe='')}"
        )

    @property
    def _approvals_path(self) -> str:
        return (
            f"/api/v2/projects/{quote(self.project_key, safe='')}/flags/{quote(self.flag_key, safe='')}"
            f"/environments/{quote(self.environment_key, safe='')}/approval-requests"
        )

    # -- reading ------------------------------------------------------------------------------

    def approval_settings(self) -> dict[str, Any]:
        """
        Return the environment's ``approvalSettings`` (``required``, ``canReviewOwnRequest``,
        ``minNumApprovals``, ``requiredApprovalTags``, ``serviceKind``, ...), as LaunchDarkly has them.

        Under ``required: true`` every change to the environment's rules goes through an approval
        request; a direct write answers 405 (:class:`ApprovalRequired`).
        """
        path = self._environment_path
        environment = self.request_json("GET", path)
        settings = self.require(environment, "approvalSettings", dict, f"GET {path}")
        if not isinstance(settings.get("required", False), bool):
            raise self.malformed(f"GET {path}", "'approvalSettings.required' is not a boolean")
        return dict(settings)

    def get_flag(self) -> dict[str, Any]:
        """Return the flag JSON, checked to have variations and this environment's rules."""
        call = f"GET {self._flag_path}"
        flag = self.request_json("GET", self._flag_path, params={"env": self.environment_key})
        variations = self.require(flag, "variations", list, call)
        if not all(isinstance(v, dict) and "_id" in v and "value" in v for v in variations):
            raise self.malformed(call, "a variation lacks '_id' or 'value'")
        environments = self.require(flag, "environments", dict, call)
        environment = self.require(environments, self.environment_key, dict, call)
        rules = self.require(environment, "rules", list, call)
        if not all(isinstance(rule, dict) and "_id" in rule for rule in rules):
            raise self.malformed(call, "a rule lacks '_id'")
        return flag

    def _rules(self, flag: dict[str, Any]) -> list[dict[str, Any]]:
        return flag["environments"][self.environment_key]["rules"]

    @staticmethod
    def rule_target(rule: dict[str, Any]) -> str | None:
        """Return the target a rule stands for: its ``ref``, else its description, else its clause value."""
        for key in ("ref", "description"):
            if isinstance(rule.get(key), str) and rule[key]:
                return rule[key]
        for clause in rule.get("clauses") or []:
            values = clause.get("values") if isinstance(clause, dict) else None
            if clause.get("attribute") == "target" and isinstance(values, list) and len(values) == 1:
                return str(values[0])
        return None

    def _rule(self, flag: dict[str, Any], target: str) -> dict[str, Any]:
        for rule in self._rules(flag):
            if self.rule_target(rule) == target:
                return rule
        raise ExternalSystemError(
            system=self.system,
            call=f"GET {self._flag_path}",
            reason=f"has no rule for target {target!r} in flag {self.flag_key!r} ({self.environment_key})",
        )

    def _served(self, flag: dict[str, Any], rule: dict[str, Any]) -> dict[str, str] | None:
        index = rule.get("variation")
        if not isinstance(index, int):
            return None  # a percentage rollout: no single image map
        variations = flag["variations"]
        if not 0 <= index < len(variations) or not isinstance(variations[index]["value"], dict):
            raise self.malformed(f"GET {self._flag_path}", f"rule {rule['_id']} serves unknown variation")
        return normalize_image_map(variations[index]["value"])

    @staticmethod
    def _variation_id(flag: dict[str, Any], image_map: Mapping[str, Any]) -> str | None:
        wanted = normalize_image_map(image_map)
        for variation in flag["variations"]:
            value = variation.get("value")
            if isinstance(value, dict) and normalize_image_map(value) == wanted:
                return variation["_id"]
        return None

    def rule_values(self) -> dict[str, dict[str, str] | None]:
        """Return what each target's rule serves now: ``{target: image map}`` (None for a rollout)."""
        flag = self.get_flag()
        values: dict[str, dict[str, str] | None] = {}
        for rule in self._rules(flag):
            target = self.rule_target(rule)
            if target is not None:
                values[target] = self._served(flag, rule)
        return values

    def rule_value(self, target: str) -> dict[str, str] | None:
        """
        Return the image map the target's rule serves now (None for a percentage rollout).

        :param target: the rule's target, e.g. ``dev-south``.
        """
        flag = self.get_flag()
        return self._served(flag, self._rule(flag, target))

    # -- writing ------------------------------------------------------------------------------

    def _with_conflict_retry(self, what: str, attempt_fn: Callable[[], T], *, after_lost: bool = True) -> T:
        """
        Run ``attempt_fn`` (which must re-read state itself) again after each 409 conflict.

        With ``after_lost``, also after a write whose answer was lost (:class:`ResponseLostError`):
        the next attempt reads first, so it finds a write that landed instead of repeating it.
        """

        def conflict(exc: BaseException) -> bool:
            if isinstance(exc, ResponseLostError):
                return after_lost
            return isinstance(exc, ExternalSystemError) and exc.status == 409

        def warn(exc: BaseException, wait: float) -> None:
            if isinstance(exc, ResponseLostError):
                self.log.warning("%s: the answer to a write was lost, looking again in %.1fs", what, wait)
            else:
                self.log.warning("%s: conflict (HTTP 409), re-reading and retrying in %.1fs", what, wait)

        return retry_conflicts(
            attempt_fn, retries=self.conflict_retries, conflict=conflict, backoff=self.backoff, warn=warn
        )

    def _patch(self, instructions: list[dict[str, Any]], comment: str) -> dict[str, Any]:
        body = {"environmentKey": self.environment_key, "comment": comment, "instructions": instructions}
        try:
            return self.request_json(
                "PATCH", self._flag_path, json=body, headers={"Content-Type": SEMANTIC_PATCH}
            )
        except ExternalSystemError as exc:
            if exc.status != 405:
                raise
            raise ApprovalRequired(
                system=self.system,
                call=exc.call,
                status=exc.status,
                body=exc.body,
                reason=(
                    f"refused a direct change: environment {self.environment_key!r} requires approval, "
                    "so the change must go through a change request"
                ),
            ) from None

    def _ensure_variation_in(
        self, flag: dict[str, Any], image_map: Mapping[str, Any], name: str | None, comment: str
    ) -> str:
        variation_id = self._variation_id(flag, image_map)
        if variation_id is not None:
            return variation_id
        value = normalize_image_map(image_map)
        instruction = {"kind": "addVariation", "value": value, "name": name or describe_image_map(value)}
        self.log.info("Adding variation %s to flag %s", describe_image_map(value), self.flag_key)
        updated = self._patch([instruction], comment)
        variation_id = self._variation_id(updated, image_map) if "variations" in updated else None
        if variation_id is None:
            variation_id = self._variation_id(self.get_flag(), image_map)
        if variation_id is None:
            raise self.malformed(f"PATCH {self._flag_path}", "the added variation is not in the flag")
        return variation_id

    def point_rule(
        self,
        target: str,
        image_map: Mapping[str, Any],
        comment: str,
        *,
        variation_name: str | None = None,
    ) -> bool:
        """
        Point the target's rule at ``image_map``; return False, writing nothing, when it already serves it.

        Reads the flag first, so a retried or cleared task never writes the flag twice. Adds
        the variation when no variation has that value. When the answer to the write is lost,
        it reads again (and returns True when its write landed) before writing again. Raises
        :class:`ApprovalRequired` when the environment requires approval (HTTP 405).

        :param target: the rule's target, e.g. ``dev-south``.
        :param image_map: the image map the rule should serve.
        :param comment: audit-log comment (say which build and why).
        :param variation_name: name for the variation if it must be added (e.g. the build name).
        """

        sent = False

        def attempt() -> bool:
            nonlocal sent
            flag = self.get_flag()
            rule = self._rule(flag, target)
            if self._served(flag, rule) == normalize_image_map(image_map):
                if sent:
                    self.log.info(
                        "Rule %s serves %s: the write whose answer was lost landed",
                        target,
                        describe_image_map(image_map),
                    )
                    return True
                self.log.info(
                    "Rule %s already serves %s: nothing to write", target, describe_image_map(image_map)
                )
                return False
            variation_id = self._ensure_variation_in(flag, image_map, variation_name, comment)
            instruction = {
                "kind": "updateRuleVariationOrRollout",
                "ruleId": rule["_id"],
                "variationId": variation_id,
            }
            try:
                self._patch([instruction], comment)
            except ResponseLostError:
                sent = True
                raise
            self.log.info("Pointed rule %s at %s", target, describe_image_map(image_map))
            return True

        return self._with_conflict_retry(f"point rule {target}", attempt)

    # -- change requests ----------------------------------------------------------------------

    def _instructions_for(
        self,
        flag: dict[str, Any],
        targets: list[str],
        image_map: Mapping[str, Any],
        variation_name: str | None,
        description: str,
        approvals_required: bool | None,
    ) -> list[dict[str, Any]]:
        """The request's instructions: ``addVariation`` first when the variation is missing and cannot be
        added directly (approval required), then one ``updateRuleVariationOrRollout`` per target."""
        instructions: list[dict[str, Any]] = []
        variation_id = self._variation_id(flag, image_map)
        if variation_id is None and approvals_required is not True:
            try:
                variation_id = self._ensure_variation_in(flag, image_map, variation_name, description)
            except ApprovalRequired:
                self.log.info("Adding the variation needs approval: it goes into the change request")
        if variation_id is None:
            value = normalize_image_map(image_map)
            # LaunchDarkly's addVariation takes value and name; the ``_id`` chosen here lets the
            # following instruction of the same request point the rule at the new variation.
            variation_id = str(uuid.uuid4())
            instructions.append(
                {
                    "kind": "addVariation",
                    "_id": variation_id,
                    "value": value,
                    "name": variation_name or describe_image_map(value),
                }
            )
        instructions.extend(
            {
                "kind": "updateRuleVariationOrRollout",
                "ruleId": self._rule(flag, name)["_id"],
                "variationId": variation_id,
            }
            for name in targets
        )
        return instructions

    def points_at(
        self, request: Mapping[str, Any], flag: dict[str, Any], target: str, image_map: Mapping[str, Any]
    ) -> bool:
        """
        True when ``request``'s instructions point ``target``'s rule at a variation serving ``image_map``.

        The variation is one the flag has, or one the same request adds (``addVariation``).

        :param request: an approval request as LaunchDarkly returns it.
        :param flag: the flag (:meth:`get_flag`).
        :param target: the rule's target.
        :param image_map: the image map the rule should serve.
        """
        instructions = request.get("instructions")
        if not isinstance(instructions, list):
            return False
        try:
            rule_id = self._rule(flag, target)["_id"]
        except ExternalSystemError:
            return False
        wanted = normalize_image_map(image_map)
        values: dict[str, Any] = {v["_id"]: v.get("value") for v in flag["variations"]}
        for instruction in instructions:
            if isinstance(instruction, dict) and instruction.get("kind") == "addVariation":
                if isinstance(instruction.get("_id"), str):
                    values.setdefault(instruction["_id"], instruction.get("value"))
        for instruction in instructions:
            if (
                isinstance(instruction, dict)
                and instruction.get("kind") == "updateRuleVariationOrRollout"
                and instruction.get("ruleId") == rule_id
            ):
                value = values.get(instruction.get("variationId"))
                if isinstance(value, dict) and normalize_image_map(value) == wanted:
                    return True
        return False

    def _find(
        self, key: str, targets: list[str], image_map: Mapping[str, Any] | None
    ) -> dict[str, Any] | None:
        candidates = [
            item for item in self.list_change_requests() if carries_key(item.get("description"), key)
        ]
        if candidates and image_map is not None:
            flag = self.get_flag()
            candidates = [
                item for item in candidates if all(self.points_at(item, flag, t, image_map) for t in targets)
            ]
        if not candidates:
            return None
        return max(candidates, key=lambda item: (item.get("creationDate") or 0, str(item["_id"])))

    def create_change_request(
        self,
        targets: Iterable[str],
        image_map: Mapping[str, Any],
        fields: Mapping[str, Any],
        description: str,
        *,
        key: str | None = None,
        variation_name: str | None = None,
        reuse_existing: bool = True,
        approvals_required: bool | None = None,
    ) -> dict[str, Any]:
        """
        File a change request (approval request) pointing each target's rule at ``image_map``.

        The description gets the marker line ``Rollout-Key: <key>``. When a request with that
        marker whose instructions point the targets at ``image_map`` exists already, it is
        returned instead of filing a second one (see :meth:`find_change_request`); a request
        whose answer was lost is found that way before anything is sent again.

        A missing variation is added directly when the environment allows it, else (HTTP 405,
        or ``approvals_required``) an ``addVariation`` instruction goes first in the request.

        :param targets: the targets whose rules the request promotes.
        :param image_map: the image map they should serve.
        :param fields: the change-request fields, sent as ``integrationConfig``: evidence links
            and hashes, details, backout plan, ``target``, ``build``, ... (LaunchDarkly does not
            return them: never read them back).
        :param description: the request's description.
        :param key: the idempotency key, e.g. ``immutable-image/<build>/<target>``; default
            :func:`rollout_key` of ``fields["build"]`` and ``fields["target"]``.
        :param variation_name: name for the variation if it must be added.
        :param reuse_existing: return an existing request for the same key and content.
        :param approvals_required: the environment's ``approvalSettings.required`` when known
            (skips trying a direct variation add that would answer 405).
        """
        targets = list(targets)
        if not targets:
            raise ValueError("a change request needs at least one target")
        fields = dict(fields)
        if key is None and fields.get("target") and fields.get("build"):
            key = rollout_key(str(fields["build"]), str(fields["target"]))
        if not key:
            raise ValueError("a change request needs a key (or fields with 'target' and 'build')")
        if not carries_key(description, key):
            description = f"{description.rstrip()}\n\n{key_line(key)}"
        call = f"POST {self._approvals_path}"

        def attempt() -> dict[str, Any]:
            if reuse_existing:
                found = self._find(key, targets, image_map)
                if found is not None:
                    self.log.info("Change request %s for %s exists already", found.get("_id"), key)
                    return found
            flag = self.get_flag()
            instructions = self._instructions_for(
                flag, targets, image_map, variation_name, description, approvals_required
            )
            body = {
                "description": description,
                "instructions": instructions,
                "notifyMemberIds": [],
                "integrationConfig": fields,
            }
            request = self.request_json("POST", self._approvals_path, json=body)
            self.require(request, "_id", str, call)
            self.log.info("Filed change request %s for %s", request["_id"], ", ".join(targets))
            return request

        return self._with_conflict_retry(f"change request for {', '.join(targets)}", attempt)

    def list_change_requests(self) -> list[dict[str, Any]]:
        """Return the flag's approval requests in this environment."""
        response = self.request_json("GET", self._approvals_path)
        items = self.require(response, "items", list, f"GET {self._approvals_path}")
        if not all(isinstance(item, dict) and "_id" in item for item in items):
            raise self.malformed(f"GET {self._approvals_path}", "an item lacks '_id'")
        return items

    def find_change_request(
        self, target: str, build: str, image_map: Mapping[str, Any] | None = None, *, key: str | None = None
    ) -> dict[str, Any] | None:
        """
        Return the newest change request for promoting ``build`` to ``target``, or None.

        A request counts only when its description has the marker line ``Rollout-Key: <key>``
        (key ``immutable-image/<build>/<target>``) AND its instructions point the target's rule
        at a variation serving ``image_map``: what LaunchDarkly returns, never echoed fields.
        Without ``image_map`` only the marker is checked (pass it: a person may copy a marker).

        Declined and failed requests are *not* skipped: a change board's "no" is a decision the
        rollout must stop on, and filing a fresh request would route around it. Re-filing after a
        decline is a human's call (``create_change_request(..., reuse_existing=False)``).

        :param target: the target, e.g. ``stage-dal10-carrier0``.
        :param build: the image build name.
        :param image_map: the build's image map (the content check).
        :param key: the idempotency key when not the default ``immutable-image/<build>/<target>``.
        """
        return self._find(key or rollout_key(build, target), [target], image_map)

    def delete_change_request(self, request_id: str) -> bool:
        """
        Delete a change request (the requester may delete its own pending request).

        Returns True when it was deleted, False when it did not exist (deleted already).

        :param request_id: the request's ``_id``.
        """
        path = f"{self._approvals_path}/{quote(request_id, safe='')}"
        response = self.request("DELETE", path, allowed_status=(404,))
        if response.status_code == 404:
            self.log.info("Change request %s does not exist (deleted already)", request_id)
            return False
        self.log.info("Deleted change request %s", request_id)
        return True

    def get_change_request(self, request_id: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
        """
        Return one change request (``reviewStatus``, ``status``, ``allReviews``, ...).

        :param request_id: the request's ``_id``.
        :param missing_ok: return None when LaunchDarkly has no such request (404: it was deleted, e.g.
            withdrawn when the prod start was rejected) instead of raising.
        """
        path = f"{self._approvals_path}/{quote(request_id, safe='')}"
        response = self.request("GET", path, allowed_status=(404,) if missing_ok else ())
        if response.status_code == 404:
            return None
        request = self.decode_json(response, f"GET {path}")
        self.require(request, "_id", str, f"GET {path}")
        return request

    def review_change_request(self, request_id: str, kind: str, comment: str = "") -> dict[str, Any]:
        """
        Post a review on a change request and return the request.

        :param request_id: the request's ``_id``.
        :param kind: ``approve``, ``decline`` or ``comment``.
        :param comment: the review comment.
        """
        if kind not in REVIEW_KINDS:
            raise ValueError(f"review kind must be one of {sorted(REVIEW_KINDS)}, not {kind!r}")
        path = f"{self._approvals_path}/{quote(request_id, safe='')}/reviews"
        return self._with_conflict_retry(
            f"review {request_id}",
            lambda: self.request_json("POST", path, json={"kind": kind, "comment": comment}),
            after_lost=False,
        )

    def apply_change_request(self, request_id: str, comment: str = "") -> dict[str, Any]:
        """
        Apply an approved change request and return it; an already applied one is returned as is.

        A lost answer to the apply is looked up again (applied? then done) before applying again.

        :param request_id: the request's ``_id``.
        :param comment: audit-log comment.
        """
        path = f"{self._approvals_path}/{quote(request_id, safe='')}/apply"

        def attempt() -> dict[str, Any]:
            request = self.get_change_request(request_id)
            if request.get("status") == "completed":
                self.log.info("Change request %s is applied already", request_id)
                return request
            try:
                self.request_json("POST", path, json={"comment": comment})
            except ExternalSystemError as exc:
                if exc.status != 400 and not isinstance(exc, ResponseLostError):
                    raise
                # An apply that timed out on our side may have gone through: look before failing.
                request = self.get_change_request(request_id)
                if request.get("status") == "completed":
                    return request
                raise
            return self.get_change_request(request_id)

        return self._with_conflict_retry(f"apply {request_id}", attempt)
