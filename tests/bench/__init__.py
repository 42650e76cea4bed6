"""``make bench``: the performance figures of issue 6 (``python -m tests.bench``).

Each part runs in its own subprocess (its own Airflow home and settings) and hands back
JSON; ``__main__`` prints the figures as ``name: value`` lines and a table. See
BENCHMARKS.md for what each figure means and the latest results.
"""

from __future__ import annotations
