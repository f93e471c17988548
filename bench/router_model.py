"""The router bench's queueing model: what each policy would give on an ideal cluster.

The same requests, the same policy objects (``make_policy``) and the same fitted cost
model as the end-to-end replay, on a cluster that behaves exactly as the router predicts:

* each prefill instance serves its requests one at a time in arrival order (FIFO), each
  taking ``transfer_s`` of the blocks it reads from the other node plus ``prefill_s`` of
  the tokens it computes: no contention for cores, no prediction error;
* each instance's node is an LRU cache of ``capacity_blocks`` trace blocks; a request
  reuses the leading run of its blocks cached on any node (peer fetch; with it off, on
  its own node only), and when its prefill ends every block of its prompt is (again) on
  its node, most recent;
* the policy sees each instance's remaining work as ``queued_s`` and the exact cached
  prefixes; the decode side always has room (it is never the bottleneck in the replay).

So the model's TTFT p90 ratio is the ceiling of a policy's gain at the replay's load,
and the gap between it and the measured ratio is what the implementation (or the host)
loses. Cost: O(requests x (instances + prompt blocks)); well under a second for the
full replay.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from bench.cluster import TimedRequest
from engine.router.costs import CostModel
from engine.router.policy import make_policy
from engine.router.views import Decision, DecodeView, PrefillView, RequestView

DECODE = DecodeView("decode-0", running=0, context_tokens=0, max_batch=1 << 20)


@dataclass(frozen=True, slots=True)
class ModelResult:
    ttft_s: list[float]
    cached_tokens: int
    local_tokens: int  # of the cached ones, on the chosen instance's own node
    prompt_tokens: int

    def figures(self, policy: str) -> dict[str, float]:
        ttft_ms = np.array(self.ttft_s) * 1e3
        return {
            f"model_ttft_p50_ms_{policy}": float(np.percentile(ttft_ms, 50)),
            f"model_ttft_p90_ms_{policy}": float(np.percentile(ttft_ms, 90)),
            f"model_hit_rate_{policy}": self.cached_tokens / self.prompt_tokens,
            f"model_local_hit_rate_{policy}": self.local_tokens / self.prompt_tokens,
        }


class _Node:
    """One store node's blocks, least recently used first."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def leading(self, ids: Sequence[int]) -> int:
        n = 0
        while n < len(ids) and ids[n] in self.blocks:
            n += 1
        return n

    def keep(self, ids: Iterable[int]) -> None:
        for block in ids:
            self.blocks[block] = None
            self.blocks.move_to_end(block)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)


def simulate(
    policy_name: str,
    requests: Sequence[TimedRequest],
    costs: CostModel,
    *,
    block_tokens: int,
    capacity_blocks: int,
    num_prefills: int = 2,
    peer_fetch: bool = True,
) -> ModelResult:
    """Replay ``requests`` (trace blocks of ``block_tokens`` tokens) under the policy
    called ``policy_name`` on the ideal cluster described in the module docstring."""
    policy = make_policy(policy_name, costs)
    ids = [f"prefill-{i}" for i in range(num_prefills)]
    nodes = {i: _Node(capacity_blocks) for i in ids}
    free_at = dict.fromkeys(ids, 0.0)
    landing: list[tuple[float, int, str, tuple[int, ...]]] = []  # prefills yet to end
    ttfts: list[float] = []
    cached_total = local_total = prompt_total = 0
    for seq, request in enumerate(requests):
        now = request.arrival_s
        while landing and landing[0][0] <= now:
            _, _, instance, blocks = heapq.heappop(landing)
            nodes[instance].keep(blocks)
        blocks = request.hash_ids
        num_tokens = len(blocks) * block_tokens
        reusable = (num_tokens - 1) // block_tokens
        prefix = {i: nodes[i].leading(blocks[:reusable]) for i in ids}
        views = [PrefillView(i, max(0.0, free_at[i] - now)) for i in ids]
        choice = policy.choose(RequestView(num_tokens, block_tokens, prefix), views, [DECODE], now)
        if not isinstance(choice, Decision):
            raise RuntimeError(f"the model's {policy_name} rejected a request: {choice.reason}")
        instance = choice.prefill
        local = prefix[instance]
        reused = _anywhere(nodes.values(), blocks[:reusable]) if peer_fetch else local
        cached = reused * block_tokens
        work_s = costs.transfer_s((reused - local) * block_tokens) + costs.prefill_s(
            num_tokens - cached, cached
        )
        done = max(free_at[instance], now) + work_s
        free_at[instance] = done
        heapq.heappush(landing, (done, seq, instance, blocks))
        ttfts.append(done - now)
        cached_total += cached
        local_total += local * block_tokens
        prompt_total += num_tokens
    return ModelResult(ttfts, cached_total, local_total, prompt_total)


def compare(
    policies: Sequence[str],
    requests: Sequence[TimedRequest],
    costs: CostModel,
    *,
    block_tokens: int,
    capacity_blocks: int,
    num_prefills: int = 2,
    peer_fetch: bool = True,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """``simulate`` each of ``policies`` (the first two compared): every policy's
    ``model_*`` figures plus ``model_ttft_p90_ratio`` (first / second), and each policy's
    TTFTs in ms."""
    figures: dict[str, float] = {}
    ttft_ms: dict[str, list[float]] = {}
    for policy in policies:
        result = simulate(
            policy,
            requests,
            costs,
            block_tokens=block_tokens,
            capacity_blocks=capacity_blocks,
            num_prefills=num_prefills,
            peer_fetch=peer_fetch,
        )
        figures.update(result.figures(policy))
        ttft_ms[policy] = [t * 1e3 for t in result.ttft_s]
    first, second = policies[:2]
    p90 = "model_ttft_p90_ms_{}".format
    figures["model_ttft_p90_ratio"] = figures[p90(first)] / figures[p90(second)]
    return figures, ttft_ms


def _anywhere(nodes: Iterable[_Node], ids: Sequence[int]) -> int:
    """The leading run of ``ids`` each held by some node (a node reads the blocks it
    misses from the peer holding them)."""
    held = list(nodes)
    n = 0
    while n < len(ids) and any(ids[n] in node.blocks for node in held):
        n += 1
    return n
