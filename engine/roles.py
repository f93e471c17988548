"""The roles a worker process plays: ``prefill`` or ``decode``.

A colocated engine is a decode worker whose ``decode.prefill`` is ``local``; it has no
role of its own. The values are what the command line (``kvengine prefill``), a worker's
``Info`` and the structured gRPC errors (``strata-role``) spell.
"""

from __future__ import annotations

import enum


class WorkerRole(enum.StrEnum):
    PREFILL = "prefill"
    DECODE = "decode"
