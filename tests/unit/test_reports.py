from __future__ import annotations

import pytest

from image_rollout.reports import ReportError, adoption, parse_account_counts, parse_carrier_counts

ACCOUNT = """# -----------------------------
# Image counts for this account
# -----------------------------
      7 8496814
   3232 8691272
   1532 8767160
     10 8935154
"""
PER_CARRIER = """# CARRIER: prod-syd..-carrier4
     56 imageid:8691272
    151 imageid:8767160
     10 imageid:8935154
# CARRIER: prod-tok02-carrier1
    200 imageid:8767160
"""


def test_runbook_account_example():
    assert parse_account_counts(ACCOUNT.splitlines()) == {
        "8496814": 7, "8691272": 3232, "8767160": 1532, "8935154": 10}


def test_runbook_per_carrier_example_and_adoption():
    carriers = parse_carrier_counts(iter(PER_CARRIER.splitlines(keepends=True)))
    assert carriers["prod-syd..-carrier4"] == {"8691272": 56, "8767160": 151, "8935154": 10}
    figures = adoption(carriers, {"8935154"})
    assert figures["carriers"]["prod-syd..-carrier4"] == {"new": 10, "total": 217, "percent": 4.6}
    assert figures["carriers"]["prod-tok02-carrier1"]["new"] == 0
    assert figures["new"] == 10 and figures["total"] == 417


@pytest.mark.parametrize("text", ["     10 imageid:1\n", "# CARRIER: c\nten imageid:1\n", "# CARRIER: c\n 5 1\n"])
def test_malformed_report_lines_are_errors(text):
    with pytest.raises(ReportError, match="line"):
        parse_carrier_counts(text.splitlines())
