"""The cache-aware routing policy (Mooncake's Conductor, made explicit), and the factory.

For a prompt of ``n`` tokens in blocks of ``B``, at most ``R = (n - 1) // B`` blocks are
reusable (the last token is always computed). Let ``local(p)`` be the leading blocks on
prefill instance ``p``'s node and ``best`` the most on any node, both capped at ``R``.
Per healthy prefill instance ``p``::

    local option: TTFT = queued(p) + prefill(n - local*B, cached=local*B)
    pull option:  TTFT = transfer((best - local)*B) + queued(p) + prefill(n - best*B, best*B)

The pull option exists only when ``best > local`` and ``best >= balance_threshold *
max(local, 1)``: KV is not moved for a marginally longer prefix (with nothing local, the
holder's prefix must be at least ``balance_threshold`` blocks). It is taken only when
strictly cheaper than the local option. A pull replicates the hot prefix: the chosen
instance's node fetches the blocks from a peer that holds them (the store's peer fetch
finds it) and keeps a copy. The decision says how many blocks come that way
(``pulled_blocks``), not from where.

The prefill instance with the least TTFT wins (ties: less queued work, then lower id).
The decode instance is the healthy one with ``running < max_batch`` that minimises
``tbt(running + 1, context_tokens + n)`` (ties: fewer running, then lower id); when every
one is at ``max_batch``, the same choice over all healthy ones (the request waits in that
worker's queue), unless a TBT SLO is set.

Rejections (the HTTP layer answers 429 with ``Retry-After``):

* a side has no healthy instance, or, with a TBT SLO set, no healthy decode instance
  has room: ``retry_after = 1 s`` (the router cannot predict when a sequence finishes).
* best TTFT > ``ttft_slo_s``: queues drain at one second per second, so instance ``p``
  meets the SLO after ``TTFT(p) - slo`` seconds if its own work (TTFT - queued) fits the
  SLO at all; ``retry_after`` = the least such wait, at least ``MIN_RETRY_AFTER_S``. If no
  instance could meet it even idle, the reason says so and ``retry_after`` is the floor.
* the chosen decode instance's TBT > ``tbt_slo_s``: ``retry_after = 1 s``.

Cost: O(prefill instances + decode instances + prefix entries) float operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from engine.router.baselines import LeastLoaded, RandomChoice, RoundRobin
from engine.router.costs import CostModel
from engine.router.views import (
    Decision,
    DecodeView,
    Policy,
    PolicyName,
    PrefillView,
    Rejection,
    RequestView,
    unavailable,
)

MIN_RETRY_AFTER_S = 0.1
DECODE_RETRY_S = 1.0
DEFAULT_BALANCE_THRESHOLD = 1.25
POLICY_NAMES = tuple(p.value for p in PolicyName)


class PrefillPlan(NamedTuple):
    """How one prefill instance would serve the request, and its predicted cost."""

    instance: str
    queued_s: float
    work_s: float  # transfer + prefill: what does not drain with the queue
    local_blocks: int
    pulled_blocks: int
    computed_tokens: int

    @property
    def ttft_s(self) -> float:
        return self.queued_s + self.work_s


class CacheAware:
    """Least predicted TTFT over prefill instances, least TBT over decode instances."""

    name = PolicyName.CACHE_AWARE

    def __init__(
        self,
        costs: CostModel,
        *,
        ttft_slo_s: float | None,
        tbt_slo_s: float | None,
        balance_threshold: float,
    ) -> None:
        if balance_threshold < 1:
            raise ValueError(f"balance_threshold must be >= 1, got {balance_threshold}")
        for name, slo in (("ttft_slo_s", ttft_slo_s), ("tbt_slo_s", tbt_slo_s)):
            if slo is not None and slo <= 0:
                raise ValueError(f"{name} must be > 0 or None, got {slo}")
        self.costs = costs
        self.ttft_slo_s = ttft_slo_s
        self.tbt_slo_s = tbt_slo_s
        self.balance_threshold = balance_threshold

    def choose(
        self,
        request: RequestView,
        prefills: Sequence[PrefillView],
        decodes: Sequence[DecodeView],
        now: float,
    ) -> Decision | Rejection:
        if rejection := unavailable(prefills, decodes):
            return rejection
        plans = self.plan_prefills(request, prefills)
        plan = min(plans, key=lambda p: (p.ttft_s, p.queued_s, p.instance))
        if self.ttft_slo_s is not None and plan.ttft_s > self.ttft_slo_s:
            return self._ttft_rejection(request, plans, self.ttft_slo_s)
        decode = self.choose_decode(request, decodes)
        if decode is None:
            return Rejection("every healthy decode instance is at max_batch", DECODE_RETRY_S)
        tbt_s = self._tbt_s(request, decode)
        if self.tbt_slo_s is not None and tbt_s > self.tbt_slo_s:
            reason = (
                f"predicted TBT {tbt_s:.4f} s on {decode.id} exceeds the SLO {self.tbt_slo_s} s"
            )
            return Rejection(reason, DECODE_RETRY_S)
        return Decision(
            prefill=plan.instance,
            decode=decode.id,
            predicted_ttft_s=plan.ttft_s,
            predicted_tbt_s=tbt_s,
            local_blocks=plan.local_blocks,
            pulled_blocks=plan.pulled_blocks,
            computed_tokens=plan.computed_tokens,
        )

    def plan_prefills(
        self, request: RequestView, prefills: Sequence[PrefillView]
    ) -> list[PrefillPlan]:
        """The cheaper option (local or pull) of every healthy prefill instance."""
        best = _best_blocks(request)
        return [self._plan(request, p, best) for p in prefills if p.healthy]

    def may_pull(self, local_blocks: int, best_blocks: int) -> bool:
        """The balancing threshold: is ``best_blocks`` long enough to be worth moving?"""
        if best_blocks <= local_blocks:
            return False
        return best_blocks >= self.balance_threshold * max(local_blocks, 1)

    def choose_decode(
        self, request: RequestView, decodes: Sequence[DecodeView]
    ) -> DecodeView | None:
        """The healthy decode instance with room and the least predicted TBT, if any."""
        healthy = [d for d in decodes if d.healthy]
        candidates = [d for d in healthy if d.has_room]
        if not candidates and self.tbt_slo_s is None:
            candidates = healthy  # no SLO to keep: queue behind a full batch
        if not candidates:
            return None
        return min(candidates, key=lambda d: (self._tbt_s(request, d), d.running, d.id))

    def _plan(self, request: RequestView, prefill: PrefillView, best: int) -> PrefillPlan:
        block_tokens, num_tokens = request.block_tokens, request.num_tokens
        local = request.cached_blocks(prefill.id)
        computed = num_tokens - local * block_tokens
        local_s = self.costs.prefill_s(computed, local * block_tokens)
        plan = PrefillPlan(prefill.id, prefill.queued_s, local_s, local, 0, computed)
        if not self.may_pull(local, best):
            return plan
        pulled = best - local
        computed = num_tokens - best * block_tokens
        pull_s = self.costs.transfer_s(pulled * block_tokens) + self.costs.prefill_s(
            computed, best * block_tokens
        )
        if pull_s >= local_s:
            return plan
        return PrefillPlan(prefill.id, prefill.queued_s, pull_s, local, pulled, computed)

    def _tbt_s(self, request: RequestView, decode: DecodeView) -> float:
        return self.costs.tbt_s(decode.running + 1, decode.context_tokens + request.num_tokens)

    def _ttft_rejection(
        self, request: RequestView, plans: Sequence[PrefillPlan], slo_s: float
    ) -> Rejection:
        waits = [p.ttft_s - slo_s for p in plans if p.work_s <= slo_s]
        if not waits:
            least = min(p.work_s for p in plans)
            reason = (
                f"a {request.num_tokens}-token prompt needs {least:.3f} s of prefill even on an"
                f" idle instance; the TTFT SLO is {slo_s} s"
            )
            return Rejection(reason, MIN_RETRY_AFTER_S)
        best = min(p.ttft_s for p in plans)
        reason = f"predicted TTFT {best:.3f} s exceeds the SLO {slo_s} s on every prefill instance"
        return Rejection(reason, max(MIN_RETRY_AFTER_S, min(waits)))


def _best_blocks(request: RequestView) -> int:
    """The most reusable leading blocks any node holds (0 when none holds any)."""
    return max((request.cached_blocks(i) for i in request.prefix_blocks), default=0)


def make_policy(
    name: PolicyName | str,
    costs: CostModel,
    *,
    ttft_slo_s: float | None = None,
    tbt_slo_s: float | None = None,
    balance_threshold: float = DEFAULT_BALANCE_THRESHOLD,
    seed: int = 0,
) -> Policy:
    """The policy called ``name`` (a ``PolicyName`` or its value). The baselines take ``costs``
    for their predictions only and ignore the SLOs and the threshold.

    Raises:
        ValueError: an unknown name (the message lists the choices) or a bad setting.
    """
    try:
        kind = PolicyName(name)
    except ValueError:
        choices = ", ".join(POLICY_NAMES)
        raise ValueError(f"unknown routing policy {name!r}; choose one of {choices}") from None
    if kind is PolicyName.CACHE_AWARE:
        return CacheAware(
            costs, ttft_slo_s=ttft_slo_s, tbt_slo_s=tbt_slo_s, balance_threshold=balance_threshold
        )
    if kind is PolicyName.ROUND_ROBIN:
        return RoundRobin(costs)
    if kind is PolicyName.LEAST_LOADED:
        return LeastLoaded(costs)
    return RandomChoice(seed, costs)
