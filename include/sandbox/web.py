"""Minimal request/response types shared by the per-system handlers, so they stay free of http.server."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from include.sandbox.core import SandboxError


@dataclass
class Request:
    method: str
    path: str  # below the system's prefix, e.g. "/api/v2/flags/default/worker-image"
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    base_url: str  # scheme://host of the request (from its Host header), no trailing slash

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> dict:
        """The JSON object body ({} when empty); a malformed body is the caller's 400."""
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except ValueError as exc:
            raise SandboxError(400, f"request body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise SandboxError(400, "request body must be a JSON object")
        return data

    def form_or_json(self) -> dict:
        """Slack's Web API takes both JSON and form-encoded bodies."""
        ctype = self.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" in ctype or (self.body and not self.body.lstrip().startswith(b"{")):
            return {k: v[0] for k, v in parse_qs(self.body.decode("utf-8", "replace")).items()}
        return self.json()


@dataclass
class Response:
    status: int
    body: object = None  # dict/list -> JSON; str/bytes -> as is
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, self.content_type or "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), self.content_type or "text/plain; charset=utf-8"
        if self.body is None:
            return b"", self.content_type or "text/plain; charset=utf-8"
        return (json.dumps(self.body) + "\n").encode(), self.content_type or "application/json"


def json_response(obj: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(status, obj, "application/json", dict(headers or {}))


def text_response(text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> Response:
    return Response(status, text, content_type)
