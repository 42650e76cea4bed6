"""
Shared base for the rollout's REST hooks, built on the http provider's ``HttpHook``.

Every external system the rollout talks to (Jenkins, LaunchDarkly, GitHub Enterprise,
chlorine, PagerDuty) is a JSON-over-HTTP API behind one Airflow connection. This module
adds what all of them need on top of ``HttpHook``: a base URL that may carry a path prefix,
a request timeout, retries with exponential backoff on transient failures, one exception
type for every failure, and the guarantee that credentials never reach logs or errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import requests
import tenacity
import urllib3
from airflow.providers.common.compat.sdk import AirflowException
from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk.exceptions import AirflowFailException
from requests.auth import AuthBase

if TYPE_CHECKING:
    from airflow.sdk import Connection
    from requests import Response, Session

T = TypeVar("T")

#: Methods that are safe to resend after a read timeout (the request may have been applied).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Status codes worth retrying: the server says "not now", not "no".
RETRYABLE_STATUS = frozenset({429}) | frozenset(range(500, 600))

BODY_LIMIT = 500
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 4
DEFAULT_RETRY_WAIT = 1.0
DEFAULT_RETRY_MAX_WAIT = 30.0


class ExternalSystemError(AirflowException):
    """
    A call to an external system failed: a 4xx answer, retries exhausted, or a malformed response.

    One type for every system so that operators and sensors can fail closed on any of them
    with a single ``except``; the attributes say which system and call, and what came back.

    :param system: the system's short name, e.g. ``jenkins``.
    :param call: the method and path, e.g. ``GET /job/Conductors/job/oceanPI/api/json``.
    :param status: the HTTP status code, or None when no response arrived.
    :param body: the response body (or the transport error), truncated, secrets removed.
    :param reason: what went wrong, completing "<system> <call> ..."; default "failed".
    """

    def __init__(
        self,
        *,
        system: str,
        call: str,
        status: int | None = None,
        body: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.system = system
        self.call = call
        self.status = status
        self.body = body
        self.reason = reason
        parts = [f"{system} {call} {reason or 'failed'}"]
        if status is not None:
            parts.append(f"HTTP {status}")
        if body:
            parts.append(body)
        super().__init__(": ".join(parts))

    def __reduce__(self):
        return (
            _rebuild_error,
            (self.system, self.call, self.status, self.body, self.reason),
        )


def _rebuild_error(system, call, status, body, reason, cls=None) -> ExternalSystemError:
    return (cls or ExternalSystemError)(system=system, call=call, status=status, body=body, reason=reason)


class MalformedResponseError(ExternalSystemError, AirflowFailException):
    """
    An answer or artifact that does not have the shape the API promises: a permanent error.

    Retrying the task cannot fix it (the same build artifact or the same broken server answers
    the same way), so it is also an ``AirflowFailException``: the task fails at once, without
    its retries, and still fails closed through any ``except ExternalSystemError``.
    """

    def __reduce__(self):
        return (
            _rebuild_error,
            (self.system, self.call, self.status, self.body, self.reason, MalformedResponseError),
        )


class ResponseLostError(ExternalSystemError):
    """
    A write was sent but its answer never came (the connection closed or timed out after sending).

    The write may have landed. It is never resent blindly: the hook that made it looks at the
    system again (is the change there?) before it writes again.
    """

    def __reduce__(self):
        return (
            _rebuild_error,
            (self.system, self.call, self.status, self.body, self.reason, ResponseLostError),
        )


def _never_sent(exc: BaseException) -> bool:
    """True when a connection error happened before the request reached the server."""
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.ProxyError):
        return True
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError):
            return True
        if isinstance(current, ConnectionRefusedError):
            return True
        pending.extend([getattr(current, "reason", None), current.__cause__, current.__context__])
        pending.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
    return False


def retry_conflicts(
    attempt: Callable[[], T],
    *,
    retries: int,
    conflict: Callable[[BaseException], bool],
    backoff: Callable[[int], float],
    warn: Callable[[BaseException, float], None],
) -> T:
    """
    Run ``attempt`` again after each conflict: the tenacity policy for writes that raced another writer.

    ``request`` retries the transport (5xx, timeouts); a conflict (409, a lost answer to a write) is
    the caller's to retry, since only a fresh read shows what to write: ``attempt`` must re-read the
    state before it writes. The last error is raised when the retries run out, any other at once.

    :param attempt: the re-read-then-write function; its result is returned.
    :param retries: attempts after the first.
    :param conflict: True for an exception worth another attempt.
    :param backoff: seconds to wait after attempt ``n`` (1-based) failed.
    :param warn: logs the exception and the wait before the next attempt.
    """
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=lambda state: backoff(state.attempt_number),
        retry=tenacity.retry_if_exception(conflict),
        before_sleep=lambda state: warn(state.outcome.exception(), state.next_action.sleep),
        reraise=True,
    )
    return retrying(attempt)


class _HttpStatusError(Exception):
    """Internal: a non-2xx answer, carried through tenacity so that 5xx can be retried."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class HeaderTokenAuth(AuthBase):
    """
    Put a token into the ``Authorization`` header of each request.

    Used instead of session headers so that the token lives only on the wire; ``__repr__``
    never shows it.

    :param value: the full header value, e.g. ``token abc`` for GitHub.
    """

    def __init__(self, value: str) -> None:
        self._value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._value
        return request

    def __repr__(self) -> str:
        return "HeaderTokenAuth(***)"


def truncate(text: str, limit: int = BODY_LIMIT) -> str:
    """Shorten ``text`` for an error message or a log line."""
    text = text.strip()
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


class RedactsConnectionSecrets:
    """What every rollout hook shares: its connection's secrets never appear in an error or a log line."""

    def secrets(self) -> list[str]:
        """Strings that must never appear in an error or a log line (the connection's password)."""
        password = self.connection.password
        return [password] if password else []

    def redact(self, text: str) -> str:
        """Replace every secret of the connection in ``text`` with ``***``."""
        for secret in self.secrets():
            text = text.replace(secret, "***")
        return text


class RolloutHttpHook(RedactsConnectionSecrets, HttpHook):
    """
    Base for the rollout's REST hooks: ``HttpHook`` plus retries, timeouts and one error type.

    The connection's ``host`` is the base URL and may include scheme and a path prefix
    (``http://127.0.0.1:8765/jenkins``). Connection extras read here (all optional):
    ``timeout`` (seconds per request), ``retries`` (extra attempts after the first),
    ``retry_wait`` (first backoff in seconds, doubled each time) and ``retry_max_wait``.
    Constructor arguments win over extras. Other extras are hook settings, never sent as
    headers (``HttpHook`` would otherwise turn every extra into a header).

    Nothing touches the network or the metadata DB until the first request. An instance
    is meant for one task (it keeps the current method on ``self.method`` like ``HttpHook``).

    :param conn_id: the Airflow connection id.
    :param timeout: seconds to wait for a response; default from the connection, else 30.
    :param retries: attempts after the first on 5xx, 429, connection errors and timeouts.
    :param retry_wait: seconds before the first retry; doubles each attempt.
    :param retry_max_wait: cap on a single wait.
    """

    #: Short lower-case name used in errors and logs; set by each subclass.
    system = "http"
    #: Connection extras that configure the hook and must not become request headers.
    hook_extras: frozenset[str] = frozenset()
    _base_extras = frozenset({"timeout", "retries", "retry_wait", "retry_max_wait"})

    def __init__(
        self,
        *,
        conn_id: str,
        timeout: float | None = None,
        retries: int | None = None,
        retry_wait: float | None = None,
        retry_max_wait: float | None = None,
    ) -> None:
        super().__init__(method="GET", http_conn_id=conn_id)
        self._timeout = timeout
        self._retries = retries
        self._retry_wait = retry_wait
        self._retry_max_wait = retry_max_wait
        self._connection: Connection | None = None

    # -- connection ---------------------------------------------------------------------------

    def get_connection(self, conn_id: str) -> Connection:  # type: ignore[override]
        """Look the connection up once per hook instance (``HttpHook`` asks on every request)."""
        if self._connection is None or self._connection.conn_id != conn_id:
            self._connection = super().get_connection(conn_id)
        return self._connection

    def reset(self) -> None:
        """Forget what earlier requests learnt (the connection): the next request starts as a new hook's.

        For a hook kept across many polls (a trigger's, for a day-long wait): each poll sees the
        connection as it is then (an edited token or host, a connection pointed back at a system),
        as a hook built for each poll did.
        """
        self._connection = None
        self._extras = None

    @property
    def connection(self) -> Connection:
        """The hook's Airflow connection (looked up on first use)."""
        return self.get_connection(self.http_conn_id)

    @property
    def extras(self) -> dict[str, Any]:
        """The connection's extra field as a dict (parsed once: hooks read it on every call)."""
        if getattr(self, "_extras", None) is None:
            self._extras = dict(self.connection.extra_dejson or {})
        return self._extras

    def extra(self, key: str, default: T) -> T:
        """Return a connection extra, or ``default`` when it is missing or empty."""
        value = self.extras.get(key)
        return default if value in (None, "") else value

    def _set_base_url(self, connection) -> None:
        super()._set_base_url(connection)
        self.base_url = self.base_url.rstrip("/")

    def _configure_session_from_auth(self, session: Session, connection: Connection) -> Session:
        session.auth = self.auth_for(connection)
        return session

    def auth_for(self, connection: Connection) -> AuthBase | tuple[str, str] | None:
        """Return the requests auth for this system; default: basic auth when a login is set."""
        return self._extract_auth(connection)

    def _configure_session_from_extra(self, session: Session, connection, extra_options: dict[str, Any]):
        session = super()._configure_session_from_extra(session, connection, extra_options)
        for key in self._base_extras | self.hook_extras:
            session.headers.pop(key, None)
        return session

    # -- settings -----------------------------------------------------------------------------

    def _setting(self, override: Any, key: str, default: Any, cast: type) -> Any:
        """A setting given to the hook, else the connection extra ``key``, else ``default``."""
        return cast(override if override is not None else self.extra(key, default))

    @property
    def timeout(self) -> float:
        """Seconds to wait for a response."""
        return self._setting(self._timeout, "timeout", DEFAULT_TIMEOUT, float)

    @property
    def retries(self) -> int:
        """Attempts after the first one."""
        return self._setting(self._retries, "retries", DEFAULT_RETRIES, int)

    @property
    def retry_wait(self) -> float:
        """Seconds before the first retry; each further retry waits twice as long."""
        return self._setting(self._retry_wait, "retry_wait", DEFAULT_RETRY_WAIT, float)

    @property
    def retry_max_wait(self) -> float:
        """Cap on a single backoff."""
        return self._setting(self._retry_max_wait, "retry_max_wait", DEFAULT_RETRY_MAX_WAIT, float)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based), e.g. after a 409 conflict."""
        return min(self.retry_wait * 2 ** (attempt - 1), self.retry_max_wait)

    def _wait(self) -> tenacity.wait.wait_base:
        return tenacity.wait_exponential(multiplier=self.retry_wait, max=self.retry_max_wait)

    # -- requests -----------------------------------------------------------------------------

    def check_response(self, response: Response) -> None:
        """Raise on a non-2xx/3xx answer, keeping status and body (``HttpHook`` logs the body)."""
        if response.status_code >= 400:
            try:
                body = response.text
            finally:
                response.close()
            raise _HttpStatusError(response.status_code, body)

    def _retryable(self, method: str) -> Callable[[BaseException], bool]:
        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, _HttpStatusError):
                return exc.status in RETRYABLE_STATUS
            if isinstance(exc, requests.exceptions.ConnectTimeout):
                return True  # never reached the server: safe for any method
            if isinstance(exc, requests.exceptions.Timeout):
                # A read timeout may mean the server applied the request: only resend when
                # resending cannot apply it twice.
                return method in IDEMPOTENT_METHODS
            if isinstance(exc, requests.exceptions.ConnectionError):
                # A connection closed after the request was sent is as ambiguous as a read
                # timeout: the write may have landed.
                return method in IDEMPOTENT_METHODS or _never_sent(exc)
            return False

        return retryable

    def _before_sleep(self, call: str) -> Callable[[tenacity.RetryCallState], None]:
        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            what = f"HTTP {exc.status}" if isinstance(exc, _HttpStatusError) else type(exc).__name__
            wait = state.next_action.sleep if state.next_action else 0
            self.log.warning(
                "%s %s failed (%s), retrying in %.2fs (attempt %d of %d)",
                self.system,
                call,
                what,
                wait,
                state.attempt_number + 1,
                self.retries + 1,
            )

        return before_sleep

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        allowed_status: tuple[int, ...] = (),
    ) -> Response:
        """
        Send one request with retries and return the response.

        Retries 5xx/429, connection errors and timeouts with exponential backoff (a read
        timeout only for idempotent methods). Raises :class:`ExternalSystemError` on any other
        4xx, or when retries are exhausted.

        :param method: HTTP method.
        :param path: path below the connection's base URL, starting with ``/``.
        :param params: query parameters.
        :param json: JSON body.
        :param data: form or raw body.
        :param headers: extra request headers.
        :param stream: leave the body unread (the caller must close the response).
        :param allowed_status: 4xx codes returned to the caller instead of raised (e.g. 404).
        """
        method = method.upper()
        if not path.startswith("/"):
            path = f"/{path}"
        call = f"{method} {path}"
        self.method = method
        options: dict[str, Any] = {"timeout": self.timeout, "stream": stream}
        kwargs: dict[str, Any] = {}
        if method == "GET":
            payload = dict(params) if params else None
        else:
            payload = data
            if params:
                kwargs["params"] = dict(params)
        if json is not None:
            kwargs["json"] = json
        retry_args = {
            "stop": tenacity.stop_after_attempt(self.retries + 1),
            "wait": self._wait(),
            "retry": tenacity.retry_if_exception(self._retryable(method)),
            "before_sleep": self._before_sleep(call),
            "reraise": True,
        }
        self.log.debug("%s %s", self.system, call)
        try:
            return self.run_with_advanced_retry(
                retry_args,
                endpoint=path,
                data=payload,
                headers=dict(headers or {}),
                extra_options=options,
                **kwargs,
            )
        except _HttpStatusError as exc:
            if exc.status in allowed_status:
                return _StatusOnlyResponse(exc.status, exc.body)
            retried = exc.status in RETRYABLE_STATUS and self.retries > 0
            raise ExternalSystemError(
                system=self.system,
                call=call,
                status=exc.status,
                body=self.redact(truncate(exc.body)),
                reason=f"failed after {self.retries + 1} attempts" if retried else None,
            ) from None
        except requests.exceptions.RequestException as exc:
            if method not in IDEMPOTENT_METHODS and not _never_sent(exc):
                raise ResponseLostError(
                    system=self.system,
                    call=call,
                    body=self.redact(truncate(f"{type(exc).__name__}: {exc}")),
                    reason="got no answer: the write may or may not have been applied",
                ) from None
            raise ExternalSystemError(
                system=self.system,
                call=call,
                body=self.redact(truncate(f"{type(exc).__name__}: {exc}")),
                reason=f"got no answer after {self.retries + 1} attempts",
            ) from None

    def request_json(
        self, method: str, path: str, *, expect: type | tuple[type, ...] = dict, **kwargs: Any
    ) -> Any:
        """
        Send a request (see :meth:`request`) and return the decoded JSON body.

        :param expect: the type the top-level JSON value must have (``dict`` or ``list``).
        """
        response = self.request(method, path, **kwargs)
        return self.decode_json(response, f"{method.upper()} {path}", expect=expect)

    def decode_json(self, response: Response, call: str, *, expect: type | tuple[type, ...] = dict) -> Any:
        """Decode a JSON body or raise :class:`MalformedResponseError` ("malformed response")."""
        try:
            value = response.json()
        except ValueError:
            value = _NOT_JSON
        if not isinstance(value, expect):
            raise self.malformed(call, f"expected a JSON {_type_names(expect)}", response)
        return value

    def malformed(self, call: str, what: str, response: Response | None = None) -> MalformedResponseError:
        """Build the (permanent) error for an answer that does not have the shape the API promises."""
        body = None
        status = None
        if response is not None:
            status = response.status_code
            try:
                body = self.redact(truncate(response.text))
            except Exception:  # a streamed body may be gone already
                body = None
        return MalformedResponseError(
            system=self.system,
            call=call,
            status=status,
            body=body,
            reason=f"returned a malformed response ({what})",
        )

    def require(self, value: Any, key: str, expect: type | tuple[type, ...], call: str) -> Any:
        """Return ``value[key]`` when it exists with the expected type, else raise "malformed response"."""
        if not isinstance(value, dict) or not isinstance(value.get(key), expect):
            raise self.malformed(call, f"'{key}' missing or not {_type_names(expect)}")
        return value[key]


_NOT_JSON = object()


def _type_names(expect: type | tuple[type, ...]) -> str:
    types = expect if isinstance(expect, tuple) else (expect,)
    return " or ".join("object" if t is dict else "array" if t is list else t.__name__ for t in types)


class _StatusOnlyResponse(requests.Response):
    """A response for an allowed 4xx: status and body only (the real one is closed)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__()
        self.status_code = status
        self._content = body.encode("utf-8")
        self.encoding = "utf-8"
