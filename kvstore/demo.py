"""``kvstore demo``: a multi-turn chat workload through a DRAM + NVMe node store.

Conversations share a few system prompts and grow turn by turn, so each request's prefix
is mostly cached: the demo looks up the longest cached run, "computes" the rest (fills
blocks with bytes derived from their keys) and puts it back, exactly as a prefill worker
does. Every hit is checked byte for byte. The DRAM tier is deliberately smaller than the
working set, so blocks are demoted to NVMe and promoted back; at the end the store is
closed and reopened to show that the NVMe tier survives a restart.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import xxhash
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kvstore.config import Config, load_config
from kvstore.hashing import Namespace, prefix_keys
from kvstore.layout import BlockSpec, KVDtype
from kvstore.stats import StatsSnapshot
from kvstore.store import NodeStore
from kvstore.types import BlockKey, NamespaceId

# A small model's KV: 4 layers x (K, V) x 64 tokens x 4 heads x 64 dims x fp16 = 256 KiB.
DEMO_SPEC = BlockSpec(
    num_layers=4, num_kv_heads=4, head_dim=64, dtype=KVDtype.FLOAT16, block_tokens=64
)
DEMO_NAMESPACE = Namespace("strata-demo", DEMO_SPEC)


@dataclass(frozen=True, slots=True)
class DemoSettings:
    num_requests: int = 1500
    num_system_prompts: int = 4
    dram_blocks: int = 256
    nvme_blocks: int = 2048
    seed: int = 0


def demo_config(data_dir: Path, settings: DemoSettings) -> Config:
    block = DEMO_SPEC.block_bytes
    return load_config(
        env={},
        overrides={
            "store.node_id": "demo",
            "store.block_bytes": str(block),
            "tiers.dram.capacity_bytes": str(settings.dram_blocks * block),
            "tiers.nvme.enabled": "true",
            "tiers.nvme.path": str(data_dir),
            "tiers.nvme.capacity_bytes": str(settings.nvme_blocks * block),
            "tiers.nvme.slab_bytes": str(256 * block),
        },
    )


def fill(key: BlockKey, buffer: memoryview) -> None:
    """Deterministic stand-in for computed KV: the key's digest stream."""
    seed = xxhash.xxh3_64_intdigest(key)
    pattern = seed.to_bytes(8, "little") * (len(buffer) // 8)
    buffer[: len(pattern)] = pattern


async def run_demo(
    console: Console, settings: DemoSettings, data_dir: Path | None = None
) -> StatsSnapshot:
    """Run the workload, print tables; returns the final stats of the first run."""
    owned = data_dir is None
    directory = Path(tempfile.mkdtemp(prefix="strata-demo-")) if data_dir is None else data_dir
    config = demo_config(directory, settings)
    try:
        async with await NodeStore.open(config) as store:
            ns_id = store.register_namespace(DEMO_NAMESPACE)
            verified = await _replay(store, ns_id, settings, console)
            stats = store.stats()
            print_stats(console, stats, title="After the workload")
            console.print(f"every hit was checked byte for byte: {verified:,} blocks verified")
        async with await NodeStore.open(config) as reopened:
            recovered = len(reopened.index)
            console.print(
                f"restart: reopened {directory}, {recovered:,} blocks recovered from NVMe"
                " (DRAM is volatile)"
            )
        return stats
    finally:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)


async def _replay(
    store: NodeStore, ns_id: NamespaceId, settings: DemoSettings, console: Console
) -> int:
    rng = random.Random(settings.seed)
    block_tokens = DEMO_SPEC.block_tokens
    prompts = [
        [rng.randrange(32000) for _ in range(block_tokens * rng.randint(2, 6))]
        for _ in range(settings.num_system_prompts)
    ]
    conversations: list[list[int]] = []
    verified = 0
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("chat requests", total=settings.num_requests)
        for _ in range(settings.num_requests):
            if conversations and rng.random() < 0.7:
                tokens = rng.choice(conversations)
            else:
                tokens = list(rng.choice(prompts))
                conversations.append(tokens)
            tokens.extend(rng.randrange(32000) for _ in range(rng.randint(40, 300)))
            verified += await _serve(store, ns_id, prefix_keys(ns_id, tokens, block_tokens))
            progress.advance(task)
    return verified


async def _serve(store: NodeStore, ns_id: NamespaceId, keys: list[BlockKey]) -> int:
    """One request: read the cached prefix, check it, compute and put the rest."""
    out = [bytearray(DEMO_SPEC.block_bytes) for _ in keys]
    hit = (await store.get_into(ns_id, keys, out)).num_hits
    expected = bytearray(DEMO_SPEC.block_bytes)
    for key, got in zip(keys[:hit], out, strict=False):
        fill(key, memoryview(expected))
        if got != expected:
            raise AssertionError(f"block {key.hex()} came back with other bytes")
    fresh = [bytearray(DEMO_SPEC.block_bytes) for _ in keys[hit:]]
    for key, buf in zip(keys[hit:], fresh, strict=True):
        fill(key, memoryview(buf))
    for start in range(hit, len(keys), 16):  # batches of 16 keep the reservation small
        batch = keys[start : start + 16]
        parent = keys[start - 1] if start else None
        await store.put(ns_id, batch, fresh[start - hit : start - hit + 16], parent=parent)
    return hit


def print_stats(console: Console, stats: StatsSnapshot, *, title: str) -> None:
    summary = Table(title=title, show_header=True, header_style="bold")
    for column in (
        "hit rate",
        "hit blocks",
        "miss blocks",
        "tokens served from cache",
        "blocks put",
    ):
        summary.add_column(column, justify="right")
    tokens = sum(sum(ns.hit_tokens.values()) for ns in stats.namespaces)
    summary.add_row(
        f"{stats.hit_rate:.1%}",
        f"{stats.hit_blocks:,}",
        f"{stats.miss_blocks:,}",
        f"{tokens:,}",
        f"{stats.put_blocks:,}",
    )
    console.print(summary)
    tiers = Table(title="Tiers", show_header=True, header_style="bold")
    for column in ("tier", "hits", "used", "capacity", "blocks", "evicted"):
        tiers.add_column(column, justify="right")
    hits = stats.hit_blocks_by_tier()
    for usage in stats.tiers:
        tiers.add_row(
            usage.tier.value,
            f"{hits.get(usage.tier, 0):,}",
            _mib(usage.used_bytes),
            _mib(usage.capacity_bytes),
            f"{usage.num_blocks:,}",
            f"{stats.evictions.get(usage.tier, 0):,}",
        )
    console.print(tiers)
    moves = [f"demoted {a.value}->{b.value}: {n:,}" for (a, b), n in stats.demotions.items()]
    moves += [f"promoted {a.value}->{b.value}: {n:,}" for (a, b), n in stats.promotions.items()]
    misses = {r.value: n for ns in stats.namespaces for r, n in ns.miss_blocks.items()}
    console.print("  ".join(moves) or "no blocks moved between tiers")
    console.print("miss reasons (blocks): " + ", ".join(f"{r} {n:,}" for r, n in misses.items()))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def main(settings: DemoSettings, data_dir: Path | None) -> int:
    console = Console()
    console.print(
        f"[bold]Strata store demo[/bold]: {settings.num_requests} chat requests, "
        f"{DEMO_SPEC.block_bytes // 1024} KiB blocks of {DEMO_SPEC.block_tokens} tokens, "
        f"DRAM {settings.dram_blocks} blocks over NVMe {settings.nvme_blocks} blocks"
    )
    asyncio.run(run_demo(console, settings, data_dir))
    return 0
