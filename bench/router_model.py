"""The router bench's queueing model: what each policy would give on an ideal cluster.

It is the cluster simulator (``engine.sim``) configured as the local replay's cluster:
the same requests, the same policy objects (``make_policy``) and the same fitted cost
model as the end-to-end replay, on a cluster that behaves exactly as the router predicts:

* each prefill instance serves its requests one at a time in arrival order (FIFO), each
  taking ``transfer_s`` of the blocks it reads from the other node plus ``prefill_s`` of
  the tokens it computes (``max`` of the two: loads overlap compute, and on this host a
  transfer is 1/40-1/200 of the compute it saves): no contention for cores, no
  prediction error;
* each instance's node is a store of ``capacity_blocks`` trace blocks (one DRAM tier,
  the store's ``BlockIndex`` with ``eviction`` policy, LRU by default); a request reuses
  the leading run of its blocks cached on any node (peer fetch; with it off, on its own
  node only), and when its prefill ends every block of its prompt is (again) on its node;
* the policy sees each instance's predicted queued work as ``queued_s`` and the exact
  cached prefixes; the decode side always has room (it is never the bottleneck in the
  replay), and TTFT ends with the prefill.

So the model's TTFT p90 ratio is the ceiling of a policy's gain at the replay's load,
and the gap between it and the measured ratio is what the implementation (or the host)
loses. ``bench.sim_error`` compares the same model with the measured replay figure by
figure. Cost: well under a second for the full replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from bench.cluster import TimedRequest
from bench.cluster_costs import SideWork
from engine.router.costs import CostModel
from engine.sim.cluster import ClusterSpec, Layout, TierSpec
from engine.sim.profiles import Profile
from engine.sim.simulator import Simulator
from engine.sim.workload import SimRequest, hash_key
from kvstore.types import EvictionPolicyKind, TierKind

KV_BYTES_PER_TOKEN = 2048  # bench.models.ModelShape: 4 layers x K,V x 1 head x 64 x float32


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


def local_profile(costs: CostModel) -> Profile:
    """The fitted cost model as a simulator profile (its transfer part goes to the link)."""
    return Profile(
        name="local-cpu",
        model="bench.models.ModelShape (random Llama: 4 layers, hidden 384, 1 KV head), float32",
        hardware="this host, one core per prefill worker",
        gpus_per_instance=1,
        kv_bytes_per_token=KV_BYTES_PER_TOKEN,
        costs=replace(costs, transfer_base_s=0.0, transfer_per_token_s=0.0),
        uncertainty="fitted by the router's profiler at the start of the replay",
        uncertainty_factor=0.1,
        sources=("engine/router/profiling.py via bench.cluster_costs.fit_costs",),
    )


NO_SIDE_WORK = SideWork(0.0, 0.0)


def local_spec(
    costs: CostModel,
    *,
    block_tokens: int,
    capacity_blocks: int,
    num_prefills: int = 2,
    peer_fetch: bool = True,
    eviction: EvictionPolicyKind = EvictionPolicyKind.LRU,
    host_cores: int = 0,
    host_busy_share: float = 0.0,
    side: SideWork = NO_SIDE_WORK,
    pin_prefills: bool = False,
    chunk_tokens: int = 512,
    max_batch_tokens: int = 0,
    decode_max_batch: int = 1 << 20,
) -> ClusterSpec:
    """The local replay's cluster: ``num_prefills`` prefill instances, each with a store
    node of ``capacity_blocks`` DRAM blocks (reuse from it is free: the fitted prefill
    cost includes reading the cached blocks), linked by the fitted transfer cost. With
    ``host_cores``, every instance shares one host of that many cores (the local
    cluster's processes on this machine), with the other processes' side work beside
    each prefill pass and decode step (``side``: their CPU per CPU second of each, as
    ``bench.cluster_costs.side_work`` measures it), less ``host_busy_share`` of them
    that other processes used; 0: the ideal cluster, no contention; ``pin_prefills``: prefill
    instance i on core i as the replay pins its workers (the decode worker anywhere). With
    ``max_batch_tokens``, a prefill instance batches prompts as the bundled prefill
    worker does (``chunk_tokens`` per prompt a pass); 0: one prompt at a time. The decode
    instance runs up to ``decode_max_batch`` sequences a step (default: no limit)."""
    dram = TierSpec(float(capacity_blocks * block_tokens * KV_BYTES_PER_TOKEN), 1e18)
    return ClusterSpec(
        layout=Layout.DISAGGREGATED,
        host_cores=host_cores,
        host_busy_share=host_busy_share,
        host_prefill_side_share=side.prefill,
        host_decode_side_share=side.decode,
        host_pin_prefills=pin_prefills,
        num_prefill=num_prefills,
        num_decode=1,
        block_tokens=block_tokens,
        eviction_policy=eviction,
        shared=peer_fetch,
        promotion_min_hits=0,
        tiers={TierKind.HBM: TierSpec(), TierKind.DRAM: dram, TierKind.NVME: TierSpec()},
        network_bytes_per_s=KV_BYTES_PER_TOKEN / max(costs.transfer_per_token_s, 1e-18),
        network_latency_s=costs.transfer_base_s,
        max_batch=decode_max_batch,
        chunk_tokens=chunk_tokens,
        max_batch_tokens=max_batch_tokens,
        kv_capacity_tokens=1 << 50,
    )


def as_sim_requests(requests: Sequence[TimedRequest], block_tokens: int) -> list[SimRequest]:
    return [
        SimRequest(
            i,
            r.arrival_s,
            len(r.hash_ids) * block_tokens,
            r.output_tokens,
            tuple(hash_key(h) for h in r.hash_ids),
        )
        for i, r in enumerate(requests)
    ]


def simulate(
    policy_name: str,
    requests: Sequence[TimedRequest],
    costs: CostModel,
    *,
    block_tokens: int,
    capacity_blocks: int,
    num_prefills: int = 2,
    peer_fetch: bool = True,
    eviction: EvictionPolicyKind = EvictionPolicyKind.LRU,
) -> ModelResult:
    """Replay ``requests`` (trace blocks of ``block_tokens`` tokens) under the policy
    called ``policy_name`` on the ideal cluster described in the module docstring."""
    spec = local_spec(
        costs,
        block_tokens=block_tokens,
        capacity_blocks=capacity_blocks,
        num_prefills=num_prefills,
        peer_fetch=peer_fetch,
        eviction=eviction,
    )
    simulator = Simulator(replace(spec, policy=policy_name), local_profile(costs))
    records = simulator.run(as_sim_requests(requests, block_tokens)).records
    if any(r.rejected for r in records):
        raise RuntimeError(f"the model's {policy_name} rejected a request")
    cached = sum(sum(r.loaded_tokens.values()) for r in records)
    remote = sum(r.loaded_tokens.get("peer", 0) for r in records)
    prompt = sum(r.prompt_tokens for r in records)
    return ModelResult([r.ttft_s for r in records], cached, cached - remote, prompt)


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
