"""Rollout status page: a FastAPI app inside the Airflow api-server showing each rollout of the worker image.

Registered by ``plugins/rollout_status_plugin.py``. Modules here are named ``status_*`` and listed
in ``.airflowignore``, so Airflow's plugin loader (which imports every ``.py`` under ``plugins/`` by
its bare file name) leaves them to the package imports.
"""

from __future__ import annotations

URL_PREFIX = "/rollout-status"
