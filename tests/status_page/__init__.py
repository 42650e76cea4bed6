"""Tests of the rollout status page plugin."""

from __future__ import annotations
