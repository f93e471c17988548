"""Strata on a CUDA GPU: the HBM tier and pinned copies against torch's own copies, the
engine in bfloat16 on a Llama-3-8B-shaped model, and its paged attention against an
attention call that needs no page gather.

Runs only where torch sees a CUDA device (``scripts/gpu_check.sh`` runs every part).
Each part is one ``--part``; every figure is a median of ``--repeats`` timed runs after
one untimed warm-up, with the device synchronised around each.

* ``tiers``: a ``NodeStore`` with an HBM tier over a pinned DRAM arena.
  ``hbm_put_gbps_<size>`` / ``hbm_get_gbps_<size>``: ``put`` / ``get_into`` of a batch of
  blocks from / into pinned host buffers (what an engine's staging gives the store),
  checksums included. ``dram_to_hbm_gbps_<size>`` / ``hbm_to_dram_gbps_<size>``: the HBM
  tier's own batch write from / read into slots of the pinned DRAM arena (the copies a
  promotion and a demotion make). Beside them, the same bytes through torch:
  ``torch_d2d_gbps`` (one device-to-device copy), ``torch_h2d_pinned_gbps`` and
  ``torch_d2h_pinned_gbps`` (one copy between a pinned host tensor and the device).
  GB/s counts the bytes moved once (not read + written).
* ``engine``: a random-weight model of Llama-3-8B's shape (32 layers, hidden 4096, 32
  query / 8 KV heads, MLP 14336, vocab 128256; KV 128 KiB per token in bfloat16) on the
  GPU, its KV store an embedded node (DRAM, pinned). ``ttft_ms_<len>_<cached%>``,
  ``prefill_s_<len>`` and ``decode_tok_s_b<B>`` exactly as ``bench.engine`` defines them
  (the same functions). ``prefill_us_per_token_<len>`` and ``decode_ms_per_step_b<B>``
  are the same figures per unit: the inputs of a cost profile.
* ``profile``: the model's forward alone, on the same shape cut to 4 layers:
  ``forward_prefill_ms_1k`` and ``forward_decode_ms_b1``, then torch's profiler tables
  of one of each (in the log, not the JSON): where a forward's time goes.
* ``attention``: one decode step's attention of one layer (32 query / 8 KV heads,
  head_dim 128, bfloat16, 16-token pages scattered over the pool) for batch B and
  context T: ``paged_us_b<B>_t<T>`` the engine's path (gather the pages, repeat KV heads,
  SDPA), ``contiguous_us_b<B>_t<T>`` SDPA over K/V already contiguous per sequence with
  grouped-query attention (what a paged kernel that reads pages in place can at best
  reach: the same bytes, no gather), and their ratio ``paged_over_contiguous_*``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import parser, progress, report
from bench.engine import decode_tok_s, measure_ttft
from bench.engine_config import EngineBenchConfig
from engine.llm import LLM
from engine.model.synthetic import write_random_checkpoint
from engine.router.costs import CostModel
from kvstore.config import load_config
from kvstore.hashing import Namespace, prefix_keys
from kvstore.layout import BlockSpec, KVDtype
from kvstore.store import NodeStore
from kvstore.tiers.base import BlockRecord, ReadItem, WriteItem
from kvstore.types import BlockKey, NamespaceId, TierKind

MiB = 1 << 20
GiB = 1 << 30
DEVICE = "cuda"
KV_BYTES_PER_TOKEN = 32 * 2 * 8 * 128 * 2  # Llama-3-8B, bfloat16: 128 KiB
LONG_BATCH, LONG_CONTEXT = 8, 2048  # a decode sample at a longer context


@dataclass(frozen=True, slots=True)
class CudaBenchConfig:
    block_sizes_mib: tuple[int, ...] = (1, 4)
    batch_bytes: int = 1 * GiB  # bytes per timed put / get / copy
    repeats: int = 5
    prompt_lengths: tuple[int, ...] = (1024, 4096)
    cached_percents: tuple[int, ...] = (0, 50, 90)
    decode_batches: tuple[int, ...] = (1, 8, 32)
    attention_batches: tuple[int, ...] = (1, 8, 32)
    attention_contexts: tuple[int, ...] = (1024, 4096)


QUICK = CudaBenchConfig(batch_bytes=256 * MiB, repeats=3, attention_contexts=(1024,))
LLAMA3_8B = {
    "hidden_size": 4096,
    "num_layers": 32,
    "num_heads": 32,
    "num_kv_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
}


def cuda_timed(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def median_s(fn: Callable[[], object], repeats: int) -> float:
    cuda_timed(fn)  # warm-up
    return statistics.median(cuda_timed(fn) for _ in range(repeats))


# -- tiers ----------------------------------------------------------------------------


def torch_copies(num_bytes: int, repeats: int) -> dict[str, float]:
    device = torch.empty(num_bytes, dtype=torch.uint8, device=DEVICE)
    other = torch.empty_like(device)
    host = torch.empty(num_bytes, dtype=torch.uint8, pin_memory=True)
    gb = num_bytes / 1e9
    return {
        "torch_d2d_gbps": gb / median_s(lambda: other.copy_(device), repeats),
        "torch_h2d_pinned_gbps": gb / median_s(lambda: device.copy_(host), repeats),
        "torch_d2h_pinned_gbps": gb / median_s(lambda: host.copy_(device), repeats),
    }


def block_spec(block_bytes: int) -> BlockSpec:
    """Llama-3-8B's KV layout (128 KiB a token in bfloat16) with enough tokens a block."""
    return BlockSpec(32, 8, 128, KVDtype.BFLOAT16, block_tokens=block_bytes // (128 * 1024))


async def store_figures(block_bytes: int, config: CudaBenchConfig) -> dict[str, float]:
    num_blocks = config.batch_bytes // block_bytes
    store = await NodeStore.open(
        load_config(
            env={},
            overrides={
                "store.node_id": f"bench-cuda-{uuid.uuid4().hex[:8]}",
                "store.block_bytes": str(block_bytes),
                "tiers.hbm.enabled": "true",
                "tiers.hbm.capacity_bytes": str(2 * num_blocks * block_bytes),
                "tiers.dram.capacity_bytes": str(2 * num_blocks * block_bytes),
            },
        )
    )
    try:
        spec = block_spec(block_bytes)
        ns = store.register_namespace(Namespace("bench-cuda", spec))
        host = torch.randint(0, 256, (num_blocks, block_bytes), dtype=torch.uint8).pin_memory()
        blocks = [memoryview(host[i].numpy()) for i in range(num_blocks)]
        puts, gets = [], []
        for round_ in range(config.repeats + 1):
            tokens = list(range(round_, round_ + num_blocks * spec.block_tokens))
            keys = prefix_keys(ns, tokens, spec.block_tokens)
            start = time.perf_counter()
            await store.put(ns, keys, blocks)
            puts.append(time.perf_counter() - start)
            if set(store.lookup(ns, keys).tiers) != {TierKind.HBM}:
                raise RuntimeError("the batch did not land in the HBM tier")
            start = time.perf_counter()
            got = await store.get_into(ns, keys, blocks)
            gets.append(time.perf_counter() - start)
            if got.num_hits != num_blocks:
                raise RuntimeError(f"get returned {got.num_hits} of {num_blocks} blocks")
            await store.remove(ns, keys)
        tier_moves = await tier_copies(store, ns, block_bytes, num_blocks, config.repeats)
    finally:
        await store.close()
    gb, size = num_blocks * block_bytes / 1e9, block_bytes // MiB
    return {
        f"hbm_put_gbps_{size}m": gb / statistics.median(puts[1:]),
        f"hbm_get_gbps_{size}m": gb / statistics.median(gets[1:]),
        **{f"{k}_{size}m": gb / v for k, v in tier_moves.items()},
    }


async def tier_copies(
    store: NodeStore, ns_id: NamespaceId, block_bytes: int, num_blocks: int, repeats: int
) -> dict[str, float]:
    """Median seconds of the HBM tier's batch write from, and read into, DRAM arena slots
    (slots taken from both tiers' allocators for the run, then given back)."""
    hbm, dram = store.tiering.tiers[TierKind.HBM], store.tiering.tiers[TierKind.DRAM]
    owners = [BlockKey(i.to_bytes(16, "little")) for i in range(num_blocks)]
    hbm_slots = hbm.slots.allocate(block_bytes, owners)
    dram_slots = dram.slots.allocate(block_bytes, owners)
    if hbm_slots is None or dram_slots is None:
        raise RuntimeError(f"no room for {num_blocks} blocks of {block_bytes} bytes per tier")
    try:
        views = [dram.view(slot) for slot in dram_slots]
        records = [
            BlockRecord(key, ns_id, None, slot, block_bytes, 0, 0, 0)
            for key, slot in zip(owners, hbm_slots, strict=True)
        ]
        writes = [WriteItem(r, v) for r, v in zip(records, views, strict=True) if v is not None]
        reads = [
            ReadItem(r.slot, block_bytes, 0, v)
            for r, v in zip(records, views, strict=True)
            if v is not None
        ]
        up, down = [], []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            await hbm.write(writes)
            up.append(time.perf_counter() - start)
            start = time.perf_counter()
            await hbm.read(reads)
            down.append(time.perf_counter() - start)
    finally:
        for slot in hbm_slots:
            hbm.slots.free(slot)
        for slot in dram_slots:
            dram.slots.free(slot)
    return {
        "dram_to_hbm_gbps": statistics.median(up[1:]),
        "hbm_to_dram_gbps": statistics.median(down[1:]),
    }


def tiers_part(config: CudaBenchConfig) -> dict[str, float]:
    results = torch_copies(config.batch_bytes, config.repeats)
    with progress() as bar:
        task = bar.add_task("HBM tier", total=len(config.block_sizes_mib))
        for size in config.block_sizes_mib:
            results.update(asyncio.run(store_figures(size * MiB, config)))
            bar.advance(task)
    for size in config.block_sizes_mib:
        results[f"hbm_put_over_h2d_{size}m"] = (
            results[f"hbm_put_gbps_{size}m"] / results["torch_h2d_pinned_gbps"]
        )
        results[f"hbm_get_over_d2h_{size}m"] = (
            results[f"hbm_get_gbps_{size}m"] / results["torch_d2h_pinned_gbps"]
        )
    return results


# -- engine ---------------------------------------------------------------------------


def engine_part(config: CudaBenchConfig, seed: int) -> dict[str, float]:
    bench = EngineBenchConfig(
        prompt_lengths=config.prompt_lengths,
        cached_percents=config.cached_percents,
        ttft_repeats=config.repeats,
        decode_batches=config.decode_batches,
    )
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="strata-bench-8b-") as tmp:
        start = time.perf_counter()
        folder = write_random_checkpoint(
            Path(tmp) / "llama3-8b-shaped", **LLAMA3_8B, seed=seed, dtype="bfloat16", device=DEVICE
        )
        written_s = time.perf_counter() - start
        with LLM(
            folder,
            device=DEVICE,
            dtype="bfloat16",
            store="embedded",
            store_bytes=16 * GiB,
            kv_cache_bytes=16 * GiB,
            prefix_caching=False,
        ) as llm:
            results = {"checkpoint_write_s": written_s, "load_s": time.perf_counter() - start}
            with progress() as bar:
                results.update(measure_ttft(llm, rng, bench, bar))
                task = bar.add_task("decode throughput", total=len(bench.decode_batches) + 1)
                for batch in bench.decode_batches:
                    results[f"decode_tok_s_b{batch}"] = decode_tok_s(llm, rng, batch, bench)
                    bar.advance(task)
                long = replace(bench, decode_prompt_tokens=LONG_CONTEXT)  # a second context
                results[f"decode_tok_s_b{LONG_BATCH}_long"] = decode_tok_s(
                    llm, rng, LONG_BATCH, long
                )
                bar.advance(task)
    for n in config.prompt_lengths:
        results[f"prefill_us_per_token_{n}"] = results[f"prefill_s_{n}"] / n * 1e6
    for batch in config.decode_batches:
        results[f"decode_ms_per_step_b{batch}"] = batch / results[f"decode_tok_s_b{batch}"] * 1e3
    return {k: float(v) for k, v in results.items()}


def cost_model(results: dict[str, float], config: CudaBenchConfig) -> CostModel:
    """The router's cost model from the engine part's figures (see ``engine.router.costs``).

    Prefill: every TTFT cell's ``compute_ms`` (from admission on: forward passes with
    their layer-wise loads and write-back), ``(uncached, cached, s)``. Decode: one step's
    seconds at each batch, with the context the batch held at mid-run (prompt + half the
    generated tokens a sequence), plus the long-prompt batch. Transfer: a token's KV over
    the pinned DRAM -> HBM copy the tier part measured (a hit in the local DRAM tier; no
    network between nodes is measured here), with no fixed cost.
    """
    bench = EngineBenchConfig()
    prefill = []
    for n in config.prompt_lengths:
        for p in config.cached_percents:
            cached = n * p // 100 // 16 * 16
            prefill.append((n - cached, cached, results[f"compute_ms_{n}_{p}"] / 1e3))
    per_seq = bench.decode_prompt_tokens + bench.decode_max_tokens // 2
    decode = [(b, b * per_seq, b / results[f"decode_tok_s_b{b}"]) for b in config.decode_batches]
    long_context = LONG_BATCH * (LONG_CONTEXT + bench.decode_max_tokens // 2)
    decode.append(
        (LONG_BATCH, long_context, LONG_BATCH / results[f"decode_tok_s_b{LONG_BATCH}_long"])
    )
    gbps = results.get("dram_to_hbm_gbps_4m", 0.0)
    per_token_s = KV_BYTES_PER_TOKEN / (gbps * 1e9) if gbps else 0.0
    fitted = CostModel.fit(prefill, [(1, per_token_s), (2, 2 * per_token_s)], decode)
    return replace(fitted, transfer_base_s=0.0)


# -- attention ------------------------------------------------------------------------


def attention_pair(batch: int, context: int, repeats: int) -> tuple[float, float]:
    """(paged µs, contiguous µs) for one decode step of one layer."""
    from engine.kv.cache import PagedKVCache
    from engine.model.llama import SeqSlice, _AttentionPlan

    heads, kv_heads, dim, page = 32, 8, 128, 16
    pages_per_seq = context // page
    cache = PagedKVCache(
        num_pages=batch * pages_per_seq + 1,
        page_tokens=page,
        num_layers=1,
        num_kv_heads=kv_heads,
        head_dim=dim,
        dtype=torch.bfloat16,
        device=DEVICE,
    )
    cache.pages.normal_()
    order = torch.randperm(batch * pages_per_seq).tolist()  # pages scattered over the pool
    tables = [order[i * pages_per_seq : (i + 1) * pages_per_seq] for i in range(batch)]
    token = torch.zeros(1, dtype=torch.long)
    seqs = [SeqSlice(token, context - 1, t) for t in tables]
    q = torch.randn(batch, heads, dim, dtype=torch.bfloat16, device=DEVICE)
    plan = _AttentionPlan.build(seqs, cache)
    paged = median_s(lambda: plan.attend(0, q, cache, None, heads // kv_heads), repeats)
    k = torch.randn(batch, kv_heads, context, dim, dtype=torch.bfloat16, device=DEVICE)
    v = torch.randn_like(k)
    contiguous = median_s(
        lambda: F.scaled_dot_product_attention(q[:, :, None, :], k, v, enable_gqa=True), repeats
    )
    return paged * 1e6, contiguous * 1e6


def attention_part(config: CudaBenchConfig) -> dict[str, float]:
    results: dict[str, float] = {}
    for batch in config.attention_batches:
        for context in config.attention_contexts:
            paged, contiguous = attention_pair(batch, context, max(config.repeats, 20))
            cell = f"b{batch}_t{context}"
            results[f"paged_us_{cell}"] = paged
            results[f"contiguous_us_{cell}"] = contiguous
            results[f"paged_over_contiguous_{cell}"] = paged / contiguous
    return results


# -- profile --------------------------------------------------------------------------


def profile_part(config: CudaBenchConfig, seed: int) -> dict[str, float]:
    """The model's forward alone (no worker, no store) on the 8B shape cut to 4 layers:
    a 1k-token prefill and a batch-1 decode step, timed, then once each under torch's
    profiler, whose top operators (host and device time) go to the log."""
    from torch.profiler import ProfilerActivity, profile

    from engine.kv.cache import PagedKVCache
    from engine.model.llama import SeqSlice
    from engine.model.loader import load_model

    layers = 4
    with tempfile.TemporaryDirectory(prefix="strata-bench-8b-") as tmp:
        folder = write_random_checkpoint(
            Path(tmp) / "llama3-8b-4-layers",
            **{**LLAMA3_8B, "num_layers": layers},
            seed=seed,
            dtype="bfloat16",
            device=DEVICE,
        )
        model = load_model(folder, dtype=torch.bfloat16, device=DEVICE).model
    c = model.config
    cache = PagedKVCache(
        num_pages=256,
        page_tokens=16,
        num_layers=c.num_layers,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        dtype=torch.bfloat16,
        device=DEVICE,
    )
    n = 1024
    pages = cache.allocate(cache.pages_for(n + 64))
    prompt = torch.randint(0, c.vocab_size, (n,))
    next_token = torch.tensor([7])
    steps = iter(range(n, n + 64))

    def prefill() -> object:
        return model([SeqSlice(prompt, 0, pages)], cache)

    def decode() -> object:
        return model([SeqSlice(next_token, next(steps), pages)], cache)

    results = {
        "forward_layers": float(layers),
        "forward_prefill_ms_1k": median_s(prefill, config.repeats) * 1e3,
        "forward_decode_ms_b1": median_s(decode, config.repeats) * 1e3,
    }
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    for name, fn in (("prefill 1k", prefill), ("decode b1", decode)):
        with profile(activities=activities) as prof:
            fn()
            torch.cuda.synchronize()
        averages = prof.key_averages()
        print(f"-- {name}: by host time")
        print(averages.table(sort_by="self_cpu_time_total", row_limit=20))
        print(f"-- {name}: by device time")
        print(averages.table(sort_by="self_device_time_total", row_limit=12))
    return results


# -- the run --------------------------------------------------------------------------


def units(key: str) -> str:
    for marker, unit in (
        ("gbps", "GB/s"),
        ("_us", "µs"),
        ("_ms", "ms"),
        ("tok_s", "tok/s"),
    ):
        if marker in key:
            return unit
    return "s" if key.endswith("_s") or "_s_" in key else "x"


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--part", choices=("tiers", "engine", "attention", "profile"), required=True)
    p.add_argument(
        "--cost-model",
        type=Path,
        default=None,
        metavar="PATH",
        help="engine part: write the router's cost model (JSON) fitted from its figures",
    )
    p.add_argument(
        "--tiers-json",
        type=Path,
        default=None,
        metavar="PATH",
        help="the tiers part's JSON: its DRAM -> HBM figure prices a loaded token",
    )
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench.cuda needs a CUDA device; this host has none")
    config = QUICK if args.quick else CudaBenchConfig()
    if args.part == "tiers":
        results = tiers_part(config)
    elif args.part == "engine":
        results = engine_part(config, args.seed)
    elif args.part == "attention":
        results = attention_part(config)
    else:
        results = profile_part(config, args.seed)
    props = torch.cuda.get_device_properties(0)
    shown = {
        "part": args.part,
        "quick": args.quick,
        "seed": args.seed,
        "device": props.name,
        "device_memory_gib": round(props.total_memory / GiB, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "repeats": config.repeats,
    }
    report(
        f"cuda-{args.part}",
        shown,
        results,
        units={k: units(k) for k in results},
        json_path=args.json,
    )
    if args.part == "engine" and args.cost_model is not None:
        tiers_path = args.tiers_json
        tiers = (
            json.loads(tiers_path.read_text())["results"]
            if tiers_path and tiers_path.exists()
            else {}
        )
        about = (
            f"Llama-3-8B-shaped random weights, bfloat16, page 16 tokens, on one {props.name}"
            f" (torch {torch.__version__}, CUDA {torch.version.cuda}); fitted by"
            " `python -m bench.cuda --part engine` from its TTFT compute and decode steps;"
            " transfer = a token's KV over the pinned DRAM -> HBM copy (no network)"
        )
        cost_model({**tiers, **results}, config).save(args.cost_model, about=about)


if __name__ == "__main__":
    main()
