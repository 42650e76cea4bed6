"""Immutable worker image rollout: hooks, operators, sensors and triggers for the rollout DAGs."""

from __future__ import annotations
