"""What a read returns to the caller, whichever way its bytes came."""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.types import MissReason, TierKind


@dataclass(frozen=True, slots=True)
class GetResult:
    num_hits: int
    blocks: list[memoryview]  # bytes of each hit (views of the caller's buffers if given)
    tiers: list[TierKind]
    node_ids: list[str]  # the node that held each hit
    miss_reason: MissReason | None
