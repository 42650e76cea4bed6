"""Immutable worker image rollout: hooks, operators, sensors and triggers for the rollout DAGs."""

from __future__ import annotations

import importlib
from typing import Any


class lazy_module:  # lower case: it stands in for a module
    """A module imported at its first attribute use, for what only a running task needs.

    Every DAG file is parsed in a fresh process, which imports everything the DAG's operator modules
    import at their top; the rules and the evidence format are used only when a task runs. Thread-safe
    (``importlib.import_module`` holds the import lock). Patch the module itself, not this stand-in.
    """

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError(f"set {attr} on the module {self._name}, not on its lazy stand-in")

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"
