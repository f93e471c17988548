"""Where the engine's exactness tests run.

``STRATA_TEST_DEVICE`` (default ``cpu``) moves the engine tests that honour it onto
another torch device, e.g. ``cuda`` on a GPU host (``scripts/gpu_check.sh`` runs them
so); ``STRATA_TEST_DTYPE`` (default: the checkpoint's) sets the engine's dtype for the
reuse and hand-off tests. CI leaves both unset.
"""

from __future__ import annotations

import os

DEVICE = os.environ.get("STRATA_TEST_DEVICE", "cpu")
DTYPE = os.environ.get("STRATA_TEST_DTYPE") or None
