"""Parse the reportCarrierWorkerIaasImageCounts logs (``uniq -c`` output) as a stream.

Per account (``prod-531277-counts.log``)::

    # Image counts for this account
          7 8496814
         10 8935154

Per carrier (``prod-531277-counts-per-carrier.log``)::

    # CARRIER: prod-syd..-carrier4
         56 imageid:8691272
         10 imageid:8935154

Reports over the whole fleet run to millions of lines, so parsing is one pass over an
iterator of lines, holding only the counts.
"""

from __future__ import annotations

from collections.abc import Iterable


class ReportError(ValueError):
    """A line that is not in the report's format."""


def parse_account_counts(lines: Iterable[str]) -> dict[str, int]:
    """Image id -> worker count, from the per-account log."""
    counts: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise ReportError(f"line {number}: not '<count> <image id>': {line.strip()[:80]!r}")
        image = parts[1]
        counts[image] = counts.get(image, 0) + int(parts[0])
    return counts


def parse_carrier_counts(lines: Iterable[str]) -> dict[str, dict[str, int]]:
    """Carrier -> image id -> worker count, from the per-carrier log."""
    carriers: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        head = parts[0]
        if head[0] == "#":
            if len(parts) >= 3 and parts[1] == "CARRIER:":
                current = carriers.setdefault(parts[2], {})
            continue
        if current is None or len(parts) != 2 or not head.isdigit() or not parts[1].startswith("imageid:"):
            raise ReportError(f"line {number}: not '<count> imageid:<id>' under a carrier: {line.strip()[:80]!r}")
        image = parts[1][8:]
        current[image] = current.get(image, 0) + int(head)
    return carriers


def adoption(carriers: dict[str, dict[str, int]], new_ids: Iterable[str]) -> dict:
    """Workers on the new image, per carrier and overall."""
    new = set(new_ids)
    per_carrier = {}
    total = on_new = 0
    for carrier, counts in sorted(carriers.items()):
        c_total = sum(counts.values())
        c_new = sum(v for k, v in counts.items() if k in new)
        per_carrier[carrier] = {"new": c_new, "total": c_total,
                                "percent": round(100.0 * c_new / c_total, 1) if c_total else 0.0}
        total += c_total
        on_new += c_new
    return {"carriers": per_carrier, "new": on_new, "total": total,
            "percent": round(100.0 * on_new / total, 1) if total else 0.0}
