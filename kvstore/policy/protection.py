"""Queue-aware protection and prefetch: requests already waiting name the blocks they read.

A request that has arrived (at the router, or in a prefill queue) but not been served
yet will read its leading cached run. Evicting those blocks now turns a certain hit into
a miss, so ``QueueProtection`` keeps them where they are until the request is served
(the mechanism pins them until its expected service time) and names those held only in a
slower tier for prefetch into the fastest one. Only requests that have already arrived
are used: no knowledge of the future. Bounded: at most ``max_blocks`` blocks per request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvstore.types import BlockKey, TierKind

Residency = Callable[[BlockKey], TierKind | None]


@dataclass(frozen=True, slots=True)
class Protection:
    """What to do for one waiting request."""

    pin: list[BlockKey]  # its leading resident run, parent first
    prefetch: list[BlockKey]  # the part of ``pin`` held only below ``fast_tier``


@dataclass(frozen=True, slots=True)
class QueueProtection:
    max_blocks: int = 4096

    def plan(self, keys: Sequence[BlockKey], where: Residency, fast_tier: TierKind) -> Protection:
        """Protection for a waiting request reading ``keys``; ``where`` says each key's tier."""
        pin: list[BlockKey] = []
        prefetch: list[BlockKey] = []
        for key in keys[: self.max_blocks]:
            tier = where(key)
            if tier is None:
                break
            pin.append(key)
            if tier.rank > fast_tier.rank:
                prefetch.append(key)
        return Protection(pin, prefetch)
