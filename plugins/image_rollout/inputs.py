"""What an image id and a build name may be: one definition for the Params form, verification,
the preconditions before a write and the evidence file (issue 9 item 6), and the strict parse of the
build's image_ids.json (at verification, and again before every promotion). The patterns themselves,
and their JSON-schema forms for the Params, are in ``image_rollout.contracts``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from image_rollout.contracts import BUILD_NAME_PATTERN, IMAGE_ID_PATTERN, IMAGE_KEYS

#: A Jenkins build number (text, compiled at first use: see ``contracts``).
BUILD_NUMBER_PATTERN = r"[0-9]{1,10}"


def _is_number(value: Any, pattern: str) -> bool:
    """``pattern`` (ASCII digits) and nothing else; an int is read as its decimal digits, a bool is no number."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return False
    return re.fullmatch(pattern, str(value), re.ASCII) is not None


def is_image_id(value: Any) -> bool:
    """1-12 ASCII digits and nothing else."""
    return _is_number(value, IMAGE_ID_PATTERN)


def is_build_number(value: Any) -> bool:
    """A Jenkins build number: 1-10 ASCII digits and nothing else."""
    return _is_number(value, BUILD_NUMBER_PATTERN)


def is_build_name(value: Any) -> bool:
    """``NNN-NNNN-NNN-YYYYMMDD`` in ASCII digits, nothing before or after it."""
    return isinstance(value, str) and re.fullmatch(BUILD_NAME_PATTERN, value, re.ASCII) is not None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"duplicate key(s) {duplicates}")
    return dict(pairs)


def parse_image_ids(text: str, where: str = "Jenkins image_ids.json") -> dict:
    """Parse and check the build's image map artifact strictly; a malformed one is a permanent error.

    Raises ``AirflowFailException`` (no retry: the artifact will not change) naming the field.
    """
    try:
        images = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise AirflowFailException(f"{where} is not valid JSON: {exc}"[:300]) from None
    if not isinstance(images, dict) or set(images) != set(IMAGE_KEYS):
        keys = sorted(images) if isinstance(images, dict) else type(images).__name__
        raise AirflowFailException(f"{where} must have exactly the keys {list(IMAGE_KEYS)}, not {keys!r}"[:300])
    for key in IMAGE_KEYS:
        if not is_image_id(images[key]):
            raise AirflowFailException(
                f"{where} {key} {images[key]!r} is not an image id (1-12 ASCII digits, nothing else)"[:300]
            )
    return {k: str(images[k]) for k in sorted(images)}
