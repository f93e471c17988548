"""Load or recompute: how much of a cached prefix a prefill loads (a pure policy).

A prefill of ``n`` tokens finds its leading blocks cached, each somewhere with its own
load cost (the node's HBM, DRAM or NVMe, or a peer node over the network). Loading block
``i`` is useful only with blocks ``0..i-1`` (a prefix key needs its ancestors), so the
choice is a cut ``k``: load blocks ``[0, k)``, compute the other ``n - k*B`` tokens on top
of them. Loading runs layer by layer while the previous layer computes, so the prefill
takes ``max(load_s(k), prefill_s(n - k*B, k*B))``; the policy picks the ``k`` that
minimises it (ties: the larger ``k``, less compute). So a slow tier's hit is taken only
when loading it beats recomputing it; below the break-even bandwidth it is recomputed.

Cost: O(cached blocks) evaluations of the cost model. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.router.costs import CostModel


@dataclass(frozen=True, slots=True)
class LoadPlan:
    loaded_blocks: int
    load_s: float
    compute_s: float

    @property
    def seconds(self) -> float:
        return max(self.load_s, self.compute_s)


def plan_load(
    block_load_s: Sequence[float], num_tokens: int, block_tokens: int, costs: CostModel
) -> LoadPlan:
    """The cut over the cached leading blocks (``block_load_s[i]``: seconds to load block
    ``i``) that finishes the prefill soonest. At most ``(n - 1) // B`` blocks are used:
    the last prompt token is always computed."""
    usable = min(len(block_load_s), (num_tokens - 1) // block_tokens)
    best = LoadPlan(0, 0.0, costs.prefill_s(num_tokens, 0))
    load_s = 0.0
    for k in range(1, usable + 1):
        load_s += block_load_s[k - 1]
        cached = k * block_tokens
        plan = LoadPlan(k, load_s, costs.prefill_s(num_tokens - cached, cached))
        if plan.seconds <= best.seconds:
            best = plan
    return best
