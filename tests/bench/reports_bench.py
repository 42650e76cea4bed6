"""``counts_report_rows_per_second``: ``image_rollout.reports.parse_carrier_counts`` over a big report.

The report is the runbook's per-carrier ``uniq -c`` log (``prod-531277-counts-per-carrier.log``)::

    # CARRIER: prod-syd01-carrier4
         56 imageid:8691272
         10 imageid:8935154

generated with 1M and 4M count rows and parsed streamed from the file (an iterator of lines,
as the operator streams the Jenkins artifact). Speed is the best of several parses of the 1M
file (as ``timeit`` reports: slower repeats measure other processes on the machine, not the
parser); the median is reported beside it. Memory: peak RSS growth of a parse in a fresh
interpreter, for 1M and 4M rows. Both reports name the same carriers and image ids (the 4M one
has four times as many sections of the same fleet), so the parsed result is the same size and
any growth would be the parser holding input.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from tests.bench.common import BUILD, ROOT, emit, median

CARRIERS = 2000
IMAGES_PER_SECTION = 50


def generate(path: Path, rows: int, seed: int = 6) -> Path:
    """Write a per-carrier report with ``rows`` count rows (kept when it already exists).

    ``CARRIERS`` carriers with ``IMAGES_PER_SECTION`` image ids each, repeated section after
    section until ``rows``: every report size names the same carriers and (carrier, image) pairs.
    """
    if path.exists() and path.stat().st_size > 0:
        return path
    rng = random.Random(seed)
    images = [str(8_000_000 + rng.randrange(1_000_000)) for _ in range(400)]
    regions = "syd tok fra lon wdc dal sao tor osa par".split()
    sections = []
    for c in range(CARRIERS):
        lines = [f"# CARRIER: prod-{regions[c % 10]}{c % 97:02d}-carrier{c}"]
        lines += [f"{rng.randrange(1, 400):7d} imageid:{images[(c * 7 + k) % len(images)]}"
                  for k in range(IMAGES_PER_SECTION)]
        sections.append("\n".join(lines) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as out:
        out.write("# -----------------------------\n# Image counts per carrier\n# -----------------------------\n")
        full, rest = divmod(rows, IMAGES_PER_SECTION)
        for i in range(full):
            out.write(sections[i % CARRIERS])
        if rest:
            out.write("\n".join(sections[full % CARRIERS].splitlines()[: rest + 1]) + "\n")
    tmp.replace(path)
    return path


def count_rows(path: Path) -> int:
    with path.open() as f:
        return sum(1 for line in f if line.strip() and not line.lstrip().startswith("#"))


def parse_file(path: Path) -> dict:
    from image_rollout.reports import parse_carrier_counts

    with path.open() as f:
        return parse_carrier_counts(f)


def timed(path: Path) -> float:
    gc.collect()
    started = time.perf_counter()
    parse_file(path)
    return time.perf_counter() - started


_MEMORY_PROBE = """
import gc, resource, sys
from image_rollout.reports import parse_carrier_counts
gc.collect()
with open("/proc/self/statm") as f:
    before = int(f.read().split()[1]) * resource.getpagesize() // 1024
with open(sys.argv[1]) as f:
    result = parse_carrier_counts(f)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, len(result))
"""


def peak_growth_kib(path: Path) -> int:
    """Peak RSS of a parse above the RSS before it, in a fresh interpreter that imports only the parser."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(path)], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    return int(out.stdout.split()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=4_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    small = generate(BUILD / "reports" / f"counts-per-carrier-{args.rows}.log", args.rows)
    big = generate(BUILD / "reports" / f"counts-per-carrier-{args.big_rows}.log", args.big_rows)
    rows_small, rows_big = count_rows(small), count_rows(big)
    parse_file(small)  # warm the page cache and the imports
    seconds = [timed(small) for _ in range(args.repeat)]
    big_seconds = timed(big)
    peak_small, peak_big = peak_growth_kib(small), peak_growth_kib(big)
    carriers = parse_file(small)
    emit({
        "counts_report_rows_per_second": round(rows_small / min(seconds)),
        "counts_report_rows_per_second_median": round(rows_small / median(seconds)),
        "counts_report_rows": rows_small,
        "counts_report_repeat": args.repeat,
        "counts_report_seconds": round(min(seconds), 3),
        "counts_report_big_rows": rows_big,
        "counts_report_big_rows_per_second": round(rows_big / big_seconds),
        "counts_report_rss_growth_kib": {"1M": peak_small, "4M": peak_big},
        "counts_report_rss_growth_ratio_4m_vs_1m": round(peak_big / max(peak_small, 1), 2),
        "counts_report_file_mib": {"1M": round(small.stat().st_size / 2**20, 1),
                                   "4M": round(big.stat().st_size / 2**20, 1)},
        "counts_report_result": {"carriers": len(carriers), "pairs": sum(len(v) for v in carriers.values())},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
