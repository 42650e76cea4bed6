"""`python -m include.sandbox` (from the repo root): run the sandbox in the foreground."""

from __future__ import annotations

import sys

from include.sandbox.server import main

sys.exit(main())
