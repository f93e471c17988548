"""Baseline routing policies: what the cache-aware policy is measured against.

None of them looks at the cache to choose; each prefill instance still reuses what its
own node holds, so their decisions report those ``local_blocks`` and never pull. Given a
cost model they fill ``predicted_ttft_s`` (queue + prefill of the uncached tokens) and
``predicted_tbt_s`` so every policy's predictions can be compared; without one those are
0. They reject only when a side has no healthy instance (no SLO checks, no max_batch).

* ``RoundRobin``: cycles the healthy prefill and decode instances independently.
* ``LeastLoaded``: the prefill instance with the least queued work, the decode instance
  with the fewest running sequences; ties by id.
* ``RandomChoice``: uniformly among the healthy instances, from a seeded RNG.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from engine.router.costs import CostModel
from engine.router.views import (
    Decision,
    DecodeView,
    PolicyName,
    PrefillView,
    Rejection,
    RequestView,
    unavailable,
)


def local_decision(
    request: RequestView, prefill: PrefillView, decode: DecodeView, costs: CostModel | None
) -> Decision:
    """The decision to run ``request`` on ``prefill`` reusing only its own node's blocks."""
    block_tokens, num_tokens = request.block_tokens, request.num_tokens
    local = request.cached_blocks(prefill.id)
    computed = num_tokens - local * block_tokens
    ttft_s = tbt_s = 0.0
    if costs is not None:
        ttft_s = prefill.queued_s + costs.prefill_s(computed, local * block_tokens)
        tbt_s = costs.tbt_s(decode.running + 1, decode.context_tokens + num_tokens)
    return Decision(prefill.id, decode.id, ttft_s, tbt_s, local, 0, computed)


class RoundRobin:
    """Cycles healthy prefill and decode instances independently, ignoring the cache."""

    name = PolicyName.ROUND_ROBIN

    def __init__(self, costs: CostModel | None = None) -> None:
        self._costs = costs
        self._num_prefills = 0  # decisions made so far, per side
        self._num_decodes = 0

    def choose(
        self,
        request: RequestView,
        prefills: Sequence[PrefillView],
        decodes: Sequence[DecodeView],
        now: float,
    ) -> Decision | Rejection:
        if rejection := unavailable(prefills, decodes):
            return rejection
        healthy_prefills = [p for p in prefills if p.healthy]
        healthy_decodes = [d for d in decodes if d.healthy]
        prefill = healthy_prefills[self._num_prefills % len(healthy_prefills)]
        decode = healthy_decodes[self._num_decodes % len(healthy_decodes)]
        self._num_prefills += 1
        self._num_decodes += 1
        return local_decision(request, prefill, decode, self._costs)


class LeastLoaded:
    """Least queued prefill work, fewest running decode sequences; ties by id."""

    name = PolicyName.LEAST_LOADED

    def __init__(self, costs: CostModel | None = None) -> None:
        self._costs = costs

    def choose(
        self,
        request: RequestView,
        prefills: Sequence[PrefillView],
        decodes: Sequence[DecodeView],
        now: float,
    ) -> Decision | Rejection:
        if rejection := unavailable(prefills, decodes):
            return rejection
        prefill = min((p for p in prefills if p.healthy), key=lambda p: (p.queued_s, p.id))
        decode = min((d for d in decodes if d.healthy), key=lambda d: (d.running, d.id))
        return local_decision(request, prefill, decode, self._costs)


class RandomChoice:
    """Uniformly random healthy instances, from ``random.Random(seed)``."""

    name = PolicyName.RANDOM

    def __init__(self, seed: int, costs: CostModel | None = None) -> None:
        self._costs = costs
        self._rng = random.Random(seed)

    def choose(
        self,
        request: RequestView,
        prefills: Sequence[PrefillView],
        decodes: Sequence[DecodeView],
        now: float,
    ) -> Decision | Rejection:
        if rejection := unavailable(prefills, decodes):
            return rejection
        prefill = self._rng.choice([p for p in prefills if p.healthy])
        decode = self._rng.choice([d for d in decodes if d.healthy])
        return local_decision(request, prefill, decode, self._costs)
