"""What an image id and a build name may be: one definition for the Params form, verification,
the preconditions before a write and the evidence file (issue 9 item 6).

Python's ``\\d`` also matches non-ASCII digits ("٣") and ``$`` matches before a trailing newline, so
the patterns are ASCII-only and used with ``fullmatch``.
"""

from __future__ import annotations

import re
from typing import Any

IMAGE_ID = re.compile(r"[0-9]{1,12}", re.ASCII)
BUILD_NAME = re.compile(r"[0-9]+-[0-9]+-[0-9]+-[0-9]{8}", re.ASCII)
BUILD_NUMBER = re.compile(r"[0-9]{1,10}", re.ASCII)
# The same rules for the Params JSON schema (checked by Python's ``re.search`` in Airflow and by the
# browser's RegExp in the trigger form): ``(?!\n)$`` refuses a trailing newline in both dialects.
IMAGE_ID_SCHEMA_PATTERN = r"^[0-9]{1,12}(?!\n)$"
BUILD_NAME_SCHEMA_PATTERN = r"^[0-9]+-[0-9]+-[0-9]+-[0-9]{8}(?!\n)$"
#: The rollout DAG; Jenkins and the watcher start one run per build (here, so the watcher's parse stays light).
DAG_ID = "immutable_image_rollout"


def run_id_for(build_name: str) -> str:
    """The DAG run id of a build's rollout: a second trigger for the same build gets 409."""
    return f"rollout__{build_name}"


def is_image_id(value: Any) -> bool:
    """1-12 ASCII digits and nothing else (an int is read as its decimal digits; a bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return False
    return IMAGE_ID.fullmatch(str(value)) is not None


def is_build_name(value: Any) -> bool:
    """``NNN-NNNN-NNN-YYYYMMDD`` in ASCII digits, nothing before or after it."""
    return isinstance(value, str) and BUILD_NAME.fullmatch(value) is not None
