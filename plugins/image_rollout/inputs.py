"""What an image id and a build name may be: one definition for the Params form, verification,
the preconditions before a write and the evidence file (issue 9 item 6). The patterns themselves,
and their JSON-schema forms for the Params, are in ``image_rollout.contracts``.
"""

from __future__ import annotations

import re
from typing import Any

from image_rollout.contracts import BUILD_NAME, IMAGE_ID

BUILD_NUMBER = re.compile(r"[0-9]{1,10}", re.ASCII)


def is_image_id(value: Any) -> bool:
    """1-12 ASCII digits and nothing else (an int is read as its decimal digits; a bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return False
    return IMAGE_ID.fullmatch(str(value)) is not None


def is_build_name(value: Any) -> bool:
    """``NNN-NNNN-NNN-YYYYMMDD`` in ASCII digits, nothing before or after it."""
    return isinstance(value, str) and BUILD_NAME.fullmatch(value) is not None
