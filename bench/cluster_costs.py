"""What the local cluster's work costs, measured on the idle cluster before a replay:
the router's cost model fitted by its own profiling (``fit_costs``), with the transfer
between the two store nodes measured here, and the side work the rest of the cluster
does for the workers' work (``side_work``), which the simulator runs beside each prefill
pass and decode step (``engine.sim.host``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench.cluster import PAGE_TOKENS, LocalCluster, worker_counters
from engine.model.loader import TINY_MODEL_PATH, load_tokenizer
from engine.router.costs import CostModel
from engine.router.profiling import profile_costs
from engine.router.workers import WorkerPool
from engine.sampling import SamplingParams
from engine.service.client import DecodeClient
from kvstore.hashing import prefix_keys
from kvstore.types import NamespaceId


class SideWork(NamedTuple):
    """The CPU seconds everything else in the cluster spends per CPU second of the work
    the cost model prices (see ``side_work``)."""

    prefill: float  # per CPU second of the prefill workers
    decode: float  # per CPU second of the decode worker's steps


class FittedCosts(NamedTuple):
    costs: CostModel
    side: SideWork


async def fit_costs(cluster: LocalCluster, model: Path | None, path: Path) -> FittedCosts:
    """The router's cost model for this cluster, saved to ``path``; the stores are then
    flushed. Prefill and decode: the router's own profiling (``profile_costs``) of
    prefill worker 0. Transfer: measured here between the two nodes (with peer fetch
    off nothing moves between them: the profile's assumed link stays).

    Side work: measured after profiling by ``side_work``.

    Why not ``profile_costs`` over both workers: it sends each pulling request right after
    the holder's first token, before the holder has published the blocks to the global
    index (every ``metadata.publish_interval_s``), so nothing is pulled, every sample
    moves 0 tokens and the fit raises. Here each pull first waits until the pulling node
    sees the holder's blocks.
    """
    c = load_tokenizer(model or TINY_MODEL_PATH).config
    pool = WorkerPool(cluster.prefill_addresses[:1], [cluster.decode_address])
    try:
        await pool.start()
        costs = await profile_costs(
            pool,
            vocab_size=min(c.vocab_size, 256),
            max_context=c.max_position_embeddings,
            kv_bytes_per_token=c.num_layers * 2 * c.num_kv_heads * c.head_dim * 4,
        )
        ns_id = NamespaceId(pool.any_info().namespace_id)
    finally:
        await pool.close()
    if cluster.spec.peer_fetch:  # else nothing moves between nodes: keep the assumed link
        longest = max(64, min(1024, c.max_position_embeddings // 2))
        samples = await _transfer_samples(cluster, ns_id, costs, longest)
        base_s, per_token_s = _line(samples)
        costs = replace(costs, transfer_base_s=base_s, transfer_per_token_s=per_token_s)
    side = await side_work(cluster)
    costs.save(path)
    await cluster.flush()
    return FittedCosts(costs, side)


SIDE_PROMPTS = ((6, 512, 1), (8, 256, 64))  # (prompts, tokens, max_tokens) per phase


async def side_work(cluster: LocalCluster) -> SideWork:
    """What the rest of the cluster does for the workers' work, on an idle cluster: the
    store nodes (writing a prompt's blocks, serving lookups), Redis, the decode worker
    outside its steps (taking hand-offs, streaming tokens) and this process (the client),
    in CPU seconds per CPU second of the prefill workers and of the decode steps.

    Two phases through prefill worker 0: prompts one at a time for one token each (a
    prefill and its hand-off, no decode step), then prompts generating together. Each
    phase's side CPU is ``prefill_share * prefill CPU + decode_share * step CPU``; the two
    phases give the two shares (negative solutions are 0). The prompts' blocks stay in the
    store for the caller to flush."""
    rng = random.Random(1)
    phases = []
    async with DecodeClient(cluster.decode_address) as client:
        for count, length, max_tokens in SIDE_PROMPTS:
            params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
            prompts = [[rng.randrange(3, 256) for _ in range(length)] for _ in range(count)]

            async def one(tokens: list[int], params: SamplingParams = params) -> None:
                address = cluster.prefill_addresses[0]
                async for _ in client.generate(tokens, params, prefill_address=address):
                    pass

            before, cpu_s = await worker_counters(cluster), cluster.cpu_s_by_role()
            if max_tokens == 1:
                for tokens in prompts:
                    await one(tokens)
            else:
                await asyncio.gather(*(one(tokens) for tokens in prompts))
            used = {role: s - cpu_s.get(role, 0.0) for role, s in cluster.cpu_s_by_role().items()}
            after = await worker_counters(cluster)
            steps_s = after["decode_step_cpu_s"] - before["decode_step_cpu_s"]
            prefill_s = used.get("prefill", 0.0)
            phases.append((prefill_s, steps_s, sum(used.values()) - prefill_s - steps_s))
    (p1, d1, o1), (p2, d2, o2) = phases
    det = p1 * d2 - p2 * d1
    if det <= 0:
        raise RuntimeError(f"side work phases cannot be told apart: {phases}")
    return SideWork(max(0.0, (o1 * d2 - o2 * d1) / det), max(0.0, (p1 * o2 - p2 * o1) / det))


async def _transfer_samples(
    cluster: LocalCluster, ns_id: NamespaceId, costs: CostModel, longest: int
) -> list[tuple[int, float]]:
    """(tokens moved, seconds) of prompts prefilled on worker 1 after worker 0, each once
    node 1 sees node 0's blocks: the time to first token less the predicted prefill."""
    rng = random.Random(0)
    samples = []
    async with DecodeClient(cluster.decode_address) as client:
        await _first_chunk(client, [3] * 32, cluster.prefill_addresses[1])  # registers ns
        for n in (longest // 4, longest // 2, longest, longest):
            tokens = [rng.randrange(3, 256) for _ in range(n)]
            await _first_chunk(client, tokens, cluster.prefill_addresses[0])
            await cluster.wait_published(ns_id, prefix_keys(ns_id, tokens, PAGE_TOKENS)[:-1])
            seconds, cached = await _first_chunk(client, tokens, cluster.prefill_addresses[1])
            samples.append((cached, max(0.0, seconds - costs.prefill_s(n - cached, cached))))
    return samples


async def _first_chunk(client: DecodeClient, tokens: list[int], prefill: str) -> tuple[float, int]:
    """Seconds to the first token of ``tokens`` prefilled on ``prefill``, and the prompt
    tokens it reused."""
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    start = time.perf_counter()
    async for chunk in client.generate(tokens, params, prefill_address=prefill):
        return time.perf_counter() - start, chunk.cached_tokens
    raise RuntimeError(f"no token for a prompt on {prefill}")


def _line(samples: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ``seconds = base + per_token * tokens`` with both >= 0."""
    if len({t for t, _ in samples}) < 2:
        raise RuntimeError(f"transfer samples moved too few distinct sizes: {samples}")
    tokens = np.array([t for t, _ in samples], dtype=np.float64)
    seconds = np.array([s for _, s in samples], dtype=np.float64)
    per_token, base = np.polyfit(tokens, seconds, 1)
    if per_token < 0:
        return float(seconds.mean()), 0.0
    if base < 0:
        return 0.0, float(tokens @ seconds / (tokens @ tokens))
    return float(base), float(per_token)
