"""Route tables for the per-system handlers: (method, path pattern) -> handler, the first match wins.

One dispatcher for every router (the sandbox's systems and the hook tests' fakes), so each system
lists its resources as a table instead of a chain of path tests. A pattern is matched against the
path's segments (split by the caller, so each system keeps its own unquoting):

* a plain segment matches itself;
* ``{name}`` matches any one segment and passes it as ``name``;
* a last ``{name*}`` matches the remaining segments, none or more, and ``{name+}`` one or more
  (passed as a list).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

#: The method of a route that takes every method (its handler answers 405 itself where it must).
ANY = "*"

Route = tuple[str, str, Callable[..., Any]]


@cache
def _parts(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("/")) if pattern else ()


def match(pattern: str, segs: Sequence[str]) -> dict[str, Any] | None:
    """The pattern's fields when ``segs`` match it, else None."""
    parts = _parts(pattern)
    fields: dict[str, Any] = {}
    for i, part in enumerate(parts):
        if part[-2:] in ("*}", "+}") and i == len(parts) - 1:
            rest = list(segs[i:])
            if part[-2] == "+" and not rest:
                return None
            fields[part[1:-2]] = rest
            return fields
        if i >= len(segs):
            return None
        if part.startswith("{"):
            fields[part[1:-1]] = segs[i]
        elif part != segs[i]:
            return None
    return fields if len(parts) == len(segs) else None


def dispatch(routes: Sequence[Route], method: str, segs: Sequence[str], *args: Any) -> Any:
    """The answer of the first route matching ``method`` and ``segs``, called as ``handler(*args, **fields)``;
    None when no route matches (the caller answers its own 404)."""
    for want, pattern, handler in routes:
        if want in (method, ANY):
            fields = match(pattern, segs)
            if fields is not None:
                return handler(*args, **fields)
    return None
