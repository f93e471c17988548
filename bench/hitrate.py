"""Prefix hit rate of the store's eviction policies on a replayed request trace.

Measured: hit rate = blocks in the longest cached leading run of each request / all
blocks requested. Every request is looked up first, then its missing blocks are put.

1. Index only, one DRAM tier of C blocks: the store's own ``BlockIndex`` with each
   ``EvictionPolicyKind`` (lru, prefix_lru, lfu) at C in ``CAPACITIES``. Per request:
   ``longest_run`` -> hits, ``touch`` them in order; then each key past the run is touched
   if resident (stranded after a hole), else inserted; after each insert, victims from
   ``select_victims`` are removed until the tier holds C blocks again.
2. Oracles (``bench.traces``): unbounded capacity (the bound for every policy) and
   Belady's offline optimum at each C, in the same lookup-then-insert model.
3. One tiered run through the real ``NodeStore`` (``TIERED_POLICY``, demotion,
   promotion, checksums, NVMe files): DRAM of ``TIERED_DRAM_BLOCKS`` over NVMe of
   ``TIERED_NVME_BLOCKS``; ``get_into`` then ``put`` of the missing tail. Reports which
   tier served the hits.

Without ``--trace`` a seeded synthetic trace of the same shape is replayed.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from rich.progress import Progress

from bench.common import Target, console, parser, progress, report, save_plot
from bench.traces import (
    Trace,
    belady_hit_rate,
    block_key,
    load_trace,
    next_uses,
    synthetic_trace,
)
from kvstore.buffers import aligned_blocks
from kvstore.config import Config, load_config
from kvstore.errors import CapacityExceeded
from kvstore.hashing import Namespace
from kvstore.index import BlockIndex, BlockMeta
from kvstore.layout import BlockSpec, KVDtype
from kvstore.policy.eviction import make_eviction_policy
from kvstore.store import NodeStore
from kvstore.types import BlockKey, EvictionPolicyKind, MissReason, SlotId, TierKind

CAPACITIES = (1_000, 10_000, 30_000, 50_000, 100_000)
POLICIES = (EvictionPolicyKind.LRU, EvictionPolicyKind.PREFIX_LRU, EvictionPolicyKind.LFU)
TIERED_DRAM_BLOCKS, TIERED_NVME_BLOCKS = 10_000, 100_000
TIERED_POLICY = EvictionPolicyKind.PREFIX_LRU  # the store's default
QUICK_REQUESTS = 4_000  # --quick replays this prefix of the trace
SYNTHETIC_REQUESTS = 6_000
EVICTION_BUDGET = 1024  # heap pops per select_victims call, as the store's default
# 1 layer x K,V x 16 tokens x 1 head x 64 dims x 2 bytes = 4096 bytes a block.
NAMESPACE = Namespace("strata-bench-hitrate", BlockSpec(1, 1, 64, KVDtype.FLOAT16, 16))
BLOCK_BYTES = NAMESPACE.block_bytes
TRACE_HELP = (
    "Mooncake-format JSONL trace to replay (one request a line with 'hash_ids'); the"
    " FAST'25 traces can be fetched from kvcache-ai/Mooncake, FAST25-release/traces/."
    " Default: a seeded synthetic trace of the same shape."
)

Advance = Callable[[int], None]


def keyed(trace: Trace) -> list[list[BlockKey]]:
    """Each request's block keys (computed once, shared by every simulation)."""
    return [[block_key(h) for h in request] for request in trace.requests]


def simulate_index(
    requests: list[list[BlockKey]],
    kind: EvictionPolicyKind,
    capacity_blocks: int | None,
    advance: Advance | None = None,
) -> float:
    """Leading-run hit rate of ``BlockIndex`` with policy ``kind`` over one DRAM tier of
    ``capacity_blocks`` blocks (None: unbounded). ``advance(n)`` reports progress."""
    index = BlockIndex(make_eviction_policy(kind))
    ns_id, dram = NAMESPACE.id, TierKind.DRAM
    hits = total = num_inserted = 0
    for i, keys in enumerate(requests):
        now = float(i)
        run = index.longest_run(ns_id, keys)
        num_hits = len(run.blocks)
        hits += num_hits
        total += len(keys)
        for hit in run.blocks:
            index.touch(hit, now)
        for j in range(num_hits, len(keys)):
            stranded = index.get(keys[j])  # resident although a block before it is not
            if stranded is not None:
                index.touch(stranded, now)
                continue
            parent = keys[j - 1] if j else None
            slot = SlotId(num_inserted)
            index.insert(BlockMeta(keys[j], ns_id, parent, BLOCK_BYTES, 0, dram, slot, now, now))
            num_inserted += 1
            if capacity_blocks is not None:
                _evict_down_to(index, capacity_blocks, now)
        if advance is not None and i % 256 == 255:
            advance(256)
    return hits / max(1, total)


def _evict_down_to(index: BlockIndex, capacity_blocks: int, now: float) -> None:
    while (excess := index.num_blocks(TierKind.DRAM) - capacity_blocks) > 0:
        batch = index.select_victims(TierKind.DRAM, excess, now, EVICTION_BUDGET)
        for victim in batch.victims:
            index.remove(victim, MissReason.EVICTED)
        if not batch.victims and not batch.work_left:
            raise AssertionError(f"{excess} blocks over capacity and no victim left")


class TieredResult(NamedTuple):
    hit_rate: float
    hits_by_tier: dict[TierKind, int]
    num_verified: int  # hit blocks whose bytes were compared with what was put
    num_failed_puts: int  # puts refused with CapacityExceeded (their blocks stay uncached)


def block_payload(key: BlockKey) -> bytes:
    """A block's bytes: its key repeated, so any mix-up shows on a compare."""
    return key * (BLOCK_BYTES // len(key))


def tiered_config(workdir: Path, dram_blocks: int, nvme_blocks: int) -> Config:
    """DRAM of ``dram_blocks`` over NVMe of ``nvme_blocks`` (files under ``workdir``)."""
    nvme_bytes = nvme_blocks * BLOCK_BYTES
    return load_config(
        env={},
        overrides={
            "store.node_id": f"hitrate-{os.getpid()}",
            "store.block_bytes": str(BLOCK_BYTES),
            "store.eviction_policy": TIERED_POLICY.value,
            "tiers.dram.capacity_bytes": str(dram_blocks * BLOCK_BYTES),
            "tiers.dram.pin_memory": "false",
            "tiers.nvme.enabled": "true",
            "tiers.nvme.path": str(workdir / "nvme"),
            "tiers.nvme.capacity_bytes": str(nvme_bytes),
            "tiers.nvme.slab_bytes": str(min(nvme_bytes, 16 << 20)),
        },
    )


async def simulate_tiered(
    requests: list[list[BlockKey]],
    config: Config,
    *,
    verify_every: int = 16,
    advance: Advance | None = None,
) -> TieredResult:
    """Replay ``requests`` through a real ``NodeStore``: ``get_into``, then ``put`` the
    missing tail. Every ``verify_every``-th request's hits are compared byte for byte with
    what was put; a mismatch raises AssertionError.
    """
    buffers = aligned_blocks(max((len(k) for k in requests), default=1), BLOCK_BYTES)
    by_tier: Counter[TierKind] = Counter()
    hits = total = num_verified = num_failed = 0
    async with await NodeStore.open(config) as store:
        ns_id = store.register_namespace(NAMESPACE)
        for i, keys in enumerate(requests):
            result = await store.get_into(ns_id, keys, buffers)
            n = result.num_hits
            hits, total = hits + n, total + len(keys)
            by_tier.update(result.tiers)
            if i % verify_every == 0:
                for key, buf in zip(keys[:n], buffers, strict=False):
                    if buf != block_payload(key):
                        raise AssertionError(f"request {i}: wrong bytes for {key.hex()}")
                num_verified += n
            if n < len(keys):
                blocks = [block_payload(k) for k in keys[n:]]
                try:
                    await store.put(ns_id, keys[n:], blocks, parent=keys[n - 1] if n else None)
                except CapacityExceeded:
                    num_failed += 1
            if advance is not None and i % 64 == 63:
                advance(64)
    return TieredResult(hits / max(1, total), dict(by_tier), num_verified, num_failed)


def index_figures(trace: Trace, capacities: tuple[int, ...], bar: Progress) -> dict[str, float]:
    """``hit_rate_<policy>_<capacity>`` for every policy, the bound, and Belady's."""
    requests = keyed(trace)
    task = bar.add_task("index", total=trace.num_requests * (len(POLICIES) * len(capacities) + 1))
    step: Advance = functools.partial(bar.advance, task)
    results: dict[str, float] = {}
    start = time.perf_counter()
    for kind in POLICIES:
        for capacity in capacities:
            bar.update(task, description=f"index {kind.value} @ {capacity:,}")
            rate = simulate_index(requests, kind, capacity, step)
            results[f"hit_rate_{kind.value}_{capacity}"] = rate
    bar.update(task, description="index unbounded")
    results["hit_rate_bound"] = simulate_index(requests, EvictionPolicyKind.LRU, None, step)
    results["index_sim_s"] = time.perf_counter() - start
    nexts = next_uses(trace)
    for capacity in capacities:
        results[f"hit_rate_belady_{capacity}"] = belady_hit_rate(trace, capacity, nexts)
    return results


def tiered_figures(
    trace: Trace, bar: Progress, dram_blocks: int, nvme_blocks: int
) -> dict[str, float]:
    """``hit_rate_tiered`` and the share of hits each tier served."""
    task = bar.add_task("tiered store", total=trace.num_requests)
    workdir = Path(tempfile.mkdtemp(prefix="strata-hitrate-"))
    start = time.perf_counter()
    try:
        config = tiered_config(workdir, dram_blocks, nvme_blocks)
        advance = functools.partial(bar.advance, task)
        run = asyncio.run(simulate_tiered(keyed(trace), config, advance=advance))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    num_hits = sum(run.hits_by_tier.values())
    return {
        "hit_rate_tiered": run.hit_rate,
        **{
            f"tiered_share_{t.value}": run.hits_by_tier.get(t, 0) / max(1, num_hits)
            for t in (TierKind.DRAM, TierKind.NVME)
        },
        "tiered_failed_puts": run.num_failed_puts,
        "tiered_sim_s": time.perf_counter() - start,
    }


def run_all(
    trace: Trace,
    capacities: tuple[int, ...] = CAPACITIES,
    dram_blocks: int = TIERED_DRAM_BLOCKS,
    nvme_blocks: int = TIERED_NVME_BLOCKS,
) -> dict[str, float]:
    """Every figure of the benchmark for ``trace``."""
    with progress() as bar:
        results = index_figures(trace, capacities, bar)
        results.update(tiered_figures(trace, bar, dram_blocks, nvme_blocks))
    timings = [k for k in results if k.endswith("_s")]
    return {
        **{k: v for k, v in results.items() if k not in timings},
        **{k: results[k] for k in timings},
    }


def plot(results: dict[str, float], capacities: tuple[int, ...], path: Path, title: str) -> None:
    """Hit rate vs capacity: one line per policy, Belady, and the unbounded bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in [k.value for k in POLICIES] + ["belady"]:
        ys = [results[f"hit_rate_{name}_{c}"] for c in capacities]
        ax.plot(capacities, ys, marker="o", linestyle="--" if name == "belady" else "-", label=name)
    ax.axhline(results["hit_rate_bound"], color="grey", linestyle=":", label="unbounded")
    tiered_at = TIERED_DRAM_BLOCKS + TIERED_NVME_BLOCKS
    label = f"store: {TIERED_DRAM_BLOCKS:,} DRAM + {TIERED_NVME_BLOCKS:,} NVMe"
    ax.plot([tiered_at], [results["hit_rate_tiered"]], "*", markersize=12, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("capacity (blocks)")
    ax.set_ylabel("prefix hit rate")
    ax.set_ylim(0, min(1.0, results["hit_rate_bound"] * 1.15 + 0.02))
    save_plot(fig, ax, title, path)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = parser(
        "Prefix hit rate of Strata's eviction policies on a Mooncake-format trace."
        f" --quick replays the first {QUICK_REQUESTS:,} requests."
    )
    p.add_argument("--trace", type=Path, metavar="PATH", help=TRACE_HELP)
    p.add_argument("--requests", type=int, metavar="N", help="replay the first N requests only")
    p.add_argument("--plot", type=Path, metavar="PATH", help="PNG (default: --json path .png)")
    args = p.parse_args(argv)
    if args.trace is not None and not args.trace.is_file():
        p.error(f"--trace: no such file: {args.trace}")
    full = load_trace(args.trace) if args.trace else synthetic_trace(SYNTHETIC_REQUESTS, args.seed)
    trace = full.head(args.requests or (QUICK_REQUESTS if args.quick else None))
    config = {
        "trace": str(args.trace) if args.trace else "synthetic",
        "trace_name": trace.name,
        "num_requests": trace.num_requests,
        "num_blocks": trace.num_blocks,
        "num_unique_blocks": trace.num_unique_blocks,
        "quick": args.quick,
        "quick_does": f"first {QUICK_REQUESTS:,} requests only" if args.quick else "-",
        "seed": args.seed,
        "block_bytes": BLOCK_BYTES,
        "capacities_blocks": list(CAPACITIES),
        "tiered_store": f"{TIERED_POLICY.value}, DRAM {TIERED_DRAM_BLOCKS:,}"
        f" + NVMe {TIERED_NVME_BLOCKS:,} blocks",
    }
    results = run_all(trace)
    targets = {f"hit_rate_prefix_lru_{c}": Target(1.0, of=f"hit_rate_lru_{c}") for c in CAPACITIES}
    units = {k: "s" if k.endswith("_s") else "" for k in results}
    report("hitrate", config, results, units=units, targets=targets, json_path=args.json)
    default_plot = args.json.with_suffix(".png") if args.json else Path("bench/results/hitrate.png")
    plot_path = args.plot or default_plot
    plot(results, CAPACITIES, plot_path, f"prefix hit rate: {trace.name}")
    console.print(f"wrote {plot_path}")
    return results


if __name__ == "__main__":
    main()
