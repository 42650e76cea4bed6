"""Timestamps in the form the external APIs take: ISO-8601 UTC with a ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_utc(value: datetime | str) -> str:
    """
    Return ``value`` as ``2026-11-25T12:00:00Z``; a string is passed through unchanged.

    :param value: an aware datetime (a naive one is taken as UTC) or an ISO string.
    """
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
