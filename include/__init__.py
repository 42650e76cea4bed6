"""Data and tools the DAGs read (rollout plans, templates) and the local sandbox of the external systems."""

from __future__ import annotations
