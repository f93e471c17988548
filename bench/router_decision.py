"""How long one routing decision takes at cluster scale (the router bench's first part).

Decision latency (``decision_latency``): 16 prefill and 4 decode instances, a
``PrefixIndex`` holding 1,000,000 blocks of 16 tokens. The index is filled with prompts of
1k-8k tokens, each a shared prefix (one of ``num_shared_prefixes`` "system prompts and
documents" of 256-2k tokens) plus its own suffix, each held by 1-2 random instances.
Requests of 1k-8k tokens then extend an indexed prompt's prefix (half of them), a shared
prefix (a third) or nothing (the rest). Timed per request with ``perf_counter_ns``: the
whole decision, ``index.longest(keys)`` + ``RequestView`` + ``CacheAware.choose`` on a
snapshot of random queues and batches; after it (not timed) the router's ``index.add``
of the prompt for the chosen instance, as in production. Memory per indexed block is
measured with ``tracemalloc`` on a separate index of ``memory_blocks`` blocks built the
same way (the 16-byte key objects included: the index keeps them alive).
"""

from __future__ import annotations

import random
import statistics
import time
import tracemalloc
from dataclasses import dataclass

from engine.router.costs import CostModel
from engine.router.policy import CacheAware
from engine.router.prefix_index import PrefixIndex
from engine.router.views import Decision, DecodeView, PrefillView, RequestView
from kvstore.types import BlockKey

DECISION_BUDGET_US = 2000.0  # target: decision p99 <= 2 ms


@dataclass(frozen=True, slots=True)
class DecisionConfig:
    num_prefills: int = 16
    num_decodes: int = 4
    index_blocks: int = 1_000_000
    num_requests: int = 4_000
    block_tokens: int = 16
    min_tokens: int = 1024
    max_tokens: int = 8192
    num_shared_prefixes: int = 500
    memory_blocks: int = 100_000
    num_snapshots: int = 256  # distinct cluster states the requests cycle through


QUICK = DecisionConfig(num_requests=1_000, memory_blocks=50_000)


class _Workload:
    """Seeded prompts (lists of block keys) sharing prefixes."""

    def __init__(self, config: DecisionConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        b = config.block_tokens
        self.min_blocks, self.max_blocks = config.min_tokens // b, config.max_tokens // b
        self.shared = [
            self.fresh(rng.randint(256 // b, 2048 // b)) for _ in range(config.num_shared_prefixes)
        ]
        self.prompts: list[list[BlockKey]] = []

    def fresh(self, num_blocks: int) -> list[BlockKey]:
        return [BlockKey(self.rng.randbytes(16)) for _ in range(num_blocks)]

    def extend(self, prefix: list[BlockKey]) -> list[BlockKey]:
        """``prefix`` plus new blocks up to a random length of 1k-8k tokens."""
        total = self.rng.randint(self.min_blocks, self.max_blocks)
        return prefix[:total] + self.fresh(max(0, total - len(prefix)))

    def fill(self, index: PrefixIndex, num_blocks: int) -> None:
        """Index prompts (each on 1-2 instances) until ``index`` holds ``num_blocks``."""
        rng = self.rng
        while len(index) < num_blocks:
            prompt = self.extend(rng.choice(self.shared))
            self.prompts.append(prompt)
            for _ in range(rng.randint(1, 2)):
                index.add(f"prefill-{rng.randrange(self.config.num_prefills):02d}", prompt)

    def request(self) -> list[BlockKey]:
        rng = self.rng
        kind = rng.random()
        if kind < 0.5 and self.prompts:
            prompt = rng.choice(self.prompts)
            return self.extend(prompt[: rng.randint(len(prompt) // 2, len(prompt))])
        if kind < 0.83:
            return self.extend(rng.choice(self.shared))
        return self.extend([])


def _snapshots(
    config: DecisionConfig, rng: random.Random
) -> list[tuple[list[PrefillView], list[DecodeView]]]:
    out = []
    for _ in range(config.num_snapshots):
        prefills = [
            PrefillView(f"prefill-{i:02d}", rng.uniform(0.0, 2.0), healthy=rng.random() > 0.02)
            for i in range(config.num_prefills)
        ]
        decodes = [
            DecodeView(f"decode-{i}", rng.randint(0, 64), rng.randint(0, 500_000), 64)
            for i in range(config.num_decodes)
        ]
        out.append((prefills, decodes))
    return out


def bytes_per_block(config: DecisionConfig, seed: int) -> float:
    """Traced bytes per indexed block of an index of ``config.memory_blocks`` blocks (at
    most ``index_blocks``)."""
    num_blocks = min(config.memory_blocks, config.index_blocks)
    workload = _Workload(config, random.Random(seed))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = PrefixIndex(num_blocks)
        workload.fill(index, num_blocks)
        workload.prompts.clear()  # keep only what the index holds
        workload.shared.clear()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / len(index)


def _percentile(sorted_values: list[int], q: float) -> float:
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def decision_latency(config: DecisionConfig, seed: int) -> dict[str, float]:
    """Latency of the full routing decision over a 1M-block index (see the docstring)."""
    rng = random.Random(seed)
    workload = _Workload(config, rng)
    index = PrefixIndex(config.index_blocks)
    start = time.perf_counter()
    workload.fill(index, config.index_blocks)
    build_s = time.perf_counter() - start
    policy = CacheAware(
        CostModel.default(), ttft_slo_s=None, tbt_slo_s=None, balance_threshold=1.25
    )
    snapshots = _snapshots(config, rng)
    requests = [workload.request() for _ in range(config.num_requests)]
    b = config.block_tokens
    times_ns, add_ns = [], []
    reused = prompt_blocks = pulls = 0
    for i, keys in enumerate(requests):
        prefills, decodes = snapshots[i % len(snapshots)]
        num_tokens = len(keys) * b + rng.randrange(b)
        t0 = time.perf_counter_ns()
        view = RequestView(num_tokens, b, index.longest(keys), max_tokens=256)
        decision = policy.choose(view, prefills, decodes, now=float(i))
        t1 = time.perf_counter_ns()
        assert isinstance(decision, Decision), decision
        index.add(decision.prefill, keys)
        add_ns.append(time.perf_counter_ns() - t1)
        times_ns.append(t1 - t0)
        reused += decision.local_blocks + decision.pulled_blocks
        prompt_blocks += len(keys)
        pulls += decision.pulled_blocks > 0
    times_ns.sort()
    return {
        "decision_p50_us": _percentile(times_ns, 0.5) / 1e3,
        "decision_p99_us": _percentile(times_ns, 0.99) / 1e3,
        "decision_max_us": times_ns[-1] / 1e3,
        "decision_budget_headroom": DECISION_BUDGET_US / (_percentile(times_ns, 0.99) / 1e3),
        "index_add_p50_us": statistics.median(add_ns) / 1e3,
        "index_bytes_per_block": bytes_per_block(config, seed),
        "reused_block_share": reused / max(1, prompt_blocks),
        "pulled_decision_share": pulls / max(1, len(requests)),
        "index_build_s": build_s,
    }


# -- end to end ----------------------------------------------------------------------
