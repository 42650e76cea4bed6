"""The route tables' dispatcher (include/sandbox/routing.py): every system's router and the hook tests'
fake LaunchDarkly rely on these matching rules, so a change here changes which handler answers a path."""

from __future__ import annotations

import pytest

from include.sandbox.routing import ANY, dispatch, match


@pytest.mark.parametrize(
    ("pattern", "segs", "fields"),
    [
        ("", [], {}),
        ("", ["api"], None),
        ("api/json", ["api", "json"], {}),
        ("api/json", ["api"], None),
        ("api/json", ["api", "json", "x"], None),
        ("flags/{project}/{flag}", ["flags", "default", "worker-image"], {"project": "default", "flag": "worker-image"}),
        ("flags/{project}/{flag}", ["flags", "default"], None),
        ("artifact/{relative*}", ["artifact"], {"relative": []}),
        ("artifact/{relative*}", ["artifact", "a", "b.json"], {"relative": ["a", "b.json"]}),
        ("contents/{parts+}", ["contents"], None),
        ("contents/{parts+}", ["contents", "dir", "file"], {"parts": ["dir", "file"]}),
        ("{ref}/{tail*}", [], None),
        ("{ref}/{tail*}", ["434"], {"ref": "434", "tail": []}),
        # Empty segments are the caller's choice (the fake LaunchDarkly keeps them): they match only themselves.
        ("/api/v2", ["", "api", "v2"], {}),
        ("/api/v2", ["api", "v2"], None),
    ],
)
def test_match(pattern, segs, fields):
    assert match(pattern, segs) == fields


def test_dispatch_takes_the_first_route_for_the_method_and_passes_args_and_fields():
    calls = []
    routes = (
        ("GET", "flags/{flag}", lambda *args, **fields: calls.append(("get", args, fields)) or "get"),
        ("PATCH", "flags/{flag}", lambda *args, **fields: "patch"),
        (ANY, "flags/{flag}", lambda *args, **fields: "405"),
        (ANY, "flags/{flag}/{rest*}", lambda *args, **fields: "deeper"),
    )
    assert dispatch(routes, "GET", ["flags", "f"], "sb", "req") == "get"
    assert calls == [("get", ("sb", "req"), {"flag": "f"})]
    assert dispatch(routes, "PATCH", ["flags", "f"]) == "patch"
    assert dispatch(routes, "DELETE", ["flags", "f"]) == "405"
    assert dispatch(routes, "GET", ["flags", "f", "x"]) == "deeper"
    assert dispatch(routes, "GET", ["other"]) is None
