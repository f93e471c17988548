"""Promotion policy: whether a hit in a slower tier copies the block up a tier.

Promotion moves a block to the next faster tier after it was served from a slower one,
so a prefix that turns hot again stops paying the slow tier's latency. Each promotion may
demote another block (bounded by the store's eviction budget), so promoting on the first
hit of a one-off scan would churn the fast tier; ``min_hits`` filters those out.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.types import TierKind


@dataclass(frozen=True, slots=True)
class PromotionPolicy:
    """Promote after ``min_hits`` hits (counting the current one); 0 disables promotion."""

    min_hits: int = 1

    def should_promote(self, num_hits: int, tier: TierKind) -> bool:
        """Whether a block with ``num_hits`` hits, just served from ``tier``, moves up."""
        if self.min_hits <= 0 or tier is TierKind.HBM:
            return False
        return num_hits >= self.min_hits
