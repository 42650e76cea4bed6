"""One closing line for ``make test``'s two pytest lanes, read from their JUnit XML reports.

``make test`` runs the real-scheduler and status-page tests in one lane, one at a time, beside the
rest on pytest-xdist workers: each lane prints its own summary, and this prints their sum, so the
last line of the run counts every test.

Usage: ``python -m tests.harness.junit_summary build/junit-*.xml``.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def totals(paths: list[str]) -> dict[str, int]:
    """Passed, failed (failures and errors) and skipped test cases over every report."""
    out = {"passed": 0, "failed": 0, "skipped": 0}
    for path in paths:
        root = ET.parse(path).getroot()
        for suite in [root] if root.tag == "testsuite" else root.iter("testsuite"):
            tests = int(suite.get("tests", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            out["failed"] += failed
            out["skipped"] += skipped
            out["passed"] += tests - failed - skipped
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m tests.harness.junit_summary REPORT.xml ...", file=sys.stderr)
        return 2
    t = totals(argv)
    print(f"total: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
