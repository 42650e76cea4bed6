"""Hooks for the external systems of the image rollout, one module per system."""

from __future__ import annotations
