"""Prefix hit rate of the store's eviction and admission policies on a replayed trace.

Measured: hit rate = blocks in the longest cached leading run of each request / all
blocks requested (``bench.cache_replay`` states the model).

1. One tier of C blocks, for C in ``CAPACITIES`` and unbounded: the store's own
   ``BlockIndex`` under every variant of ``bench.cache_replay.VARIANTS`` (each eviction
   policy the store can be configured with, and KV-specific eviction/admission pairs).
2. Oracles (``bench.traces``): unbounded capacity, Belady's offline optimum, and LRU with
   oracle admission (stores only blocks that will be read again: knows *whether*, not
   *when*), at each C. With ``--lookahead-s L``: the queue-aware variants (``+queue``),
   which pin what requests already arrived (up to L s before their service) will read.
3. What an online predictor could know (``bench.conversations``): the chance that a
   request is extended, by turn, and the gaps before it is.
4. Tiered: each eviction policy in the real ``NodeStore`` (demotion, promotion,
   checksums, NVMe files): DRAM of ``TIERED_DRAM_BLOCKS`` over NVMe of
   ``TIERED_NVME_BLOCKS``; ``get_into`` then ``put`` of the missing tail. Then each
   admission policy, set through the store's config (``store.admission_policy``), with
   the default eviction policy: rows ``<eviction>+<admission>``.
5. Cost: µs per access of each eviction policy with ``--cost-blocks`` resident
   (``bench.policy_cost``).

``--trace`` replays a Mooncake-format trace; without it, ``--workload`` picks a seeded
synthetic one: ``chat`` (shaped like the conversation trace) or ``agent`` (tool agents and
document QA, ``bench.agent_trace``: the second, structurally different workload).
``--score-from F`` counts only the requests after fraction F of the trace (the rest warm
the cache): with F = 0.5 a policy tuned on the first half is judged on the second.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from rich.progress import Progress
from rich.table import Table

from bench.agent_trace import agent_trace
from bench.cache_replay import (
    BLOCK_BYTES,
    NAMESPACE,
    VARIANTS,
    Advance,
    Variant,
    keyed,
    replay,
)
from bench.common import Target, console, parser, progress, report, save_plot
from bench.conversations import extension_figures
from bench.policy_cost import access_cost
from bench.traces import (
    Trace,
    belady_hit_rate,
    load_trace,
    next_uses,
    oracle_admission_hit_rate,
    synthetic_trace,
)
from kvstore.buffers import aligned_blocks
from kvstore.config import Config, load_config
from kvstore.errors import CapacityExceeded
from kvstore.store import NodeStore
from kvstore.types import AdmissionPolicyKind, BlockKey, EvictionPolicyKind, TierKind

CAPACITIES = (1_000, 10_000, 30_000, 50_000, 100_000)
QUICK_CAPACITIES = (1_000, 10_000)
TIERED_DRAM_BLOCKS, TIERED_NVME_BLOCKS = 10_000, 100_000
QUEUE_VARIANTS = ("prefix_lru", "chain_value", "chain_value+full")  # rows with --lookahead-s
QUICK_REQUESTS = 4_000  # --quick replays this prefix of the trace
SYNTHETIC_REQUESTS = 12_000
COST_BLOCKS, QUICK_COST_BLOCKS = 1_000_000, 100_000
COST_ACCESSES = 20_000
TARGET_10K, TARGET_1K = 0.29, 0.10  # the targets on the conversation trace
TRACE_HELP = (
    "Mooncake-format JSONL trace to replay (one request a line with 'hash_ids'); the"
    " FAST'25 traces can be fetched from kvcache-ai/Mooncake, FAST25-release/traces/."
    " Default: a seeded synthetic trace of the same shape."
)
WORKLOADS = {"chat": synthetic_trace, "agent": agent_trace}


def rate_key(name: str, capacity: int) -> str:
    return f"hit_rate_{name}_{capacity}"


def index_figures(
    trace: Trace,
    capacities: Sequence[int],
    bar: Progress,
    *,
    lookahead_s: float = 0.0,
    score_from: int = 0,
    variants: Sequence[str] | None = None,
    queue_variants: Sequence[str] = QUEUE_VARIANTS,
) -> dict[str, float]:
    """``hit_rate_<variant>_<capacity>`` for every variant (or those named in ``variants``,
    and ``+queue`` ones with a lookahead), the unbounded bound and the oracles."""
    requests = keyed(trace)
    chosen = [v for v in VARIANTS if variants is None or v.name in variants]
    rows: list[tuple[str, Variant, float]] = [(v.name, v, 0.0) for v in chosen]
    if lookahead_s > 0:
        by_name = {v.name: v for v in VARIANTS}
        rows += [(f"{n}+queue", by_name[n], lookahead_s) for n in queue_variants]
    num_sims = len(rows) * len(capacities) + 1
    task = bar.add_task("index", total=(trace.num_requests // 256) * 256 * num_sims)
    step: Advance = functools.partial(bar.advance, task)
    results: dict[str, float] = {}
    start = time.perf_counter()
    for name, variant, lookahead in rows:
        for capacity in capacities:
            bar.update(task, description=f"{name} @ {capacity:,}")
            run = replay(
                trace,
                requests,
                variant,
                capacity,
                lookahead_s=lookahead,
                score_from=score_from,
                advance=step,
            )
            results[rate_key(name, capacity)] = run.hit_rate
            if run.num_overflows:
                results[f"overflows_{name}_{capacity}"] = run.num_overflows
    bar.update(task, description="unbounded")
    results["hit_rate_bound"] = replay(
        trace, requests, VARIANTS[0], None, score_from=score_from, advance=step
    ).hit_rate
    results["index_sim_s"] = time.perf_counter() - start
    if score_from == 0:  # the oracles score whole traces
        nexts = next_uses(trace)
        for capacity in capacities:
            results[rate_key("belady", capacity)] = belady_hit_rate(trace, capacity, nexts)
            results[rate_key("oracle_admission", capacity)] = oracle_admission_hit_rate(
                trace, capacity, nexts
            )
    return results


def gap_figures(results: dict[str, float], capacities: Sequence[int]) -> dict[str, float]:
    """Per capacity: the best online variant and the share of LRU's gap to Belady it closes."""
    out: dict[str, float] = {}
    online = [v.name for v in VARIANTS if rate_key(v.name, capacities[0]) in results]
    for c in capacities:
        lru, belady = results[rate_key("lru", c)], results.get(rate_key("belady", c))
        best = max(results[rate_key(n, c)] for n in online)
        out[f"best_online_{c}"] = best
        if belady is not None and belady > lru:
            out[f"gap_closed_best_online_{c}"] = (best - lru) / (belady - lru)
            oracle = results[rate_key("oracle_admission", c)]
            out[f"gap_closed_oracle_admission_{c}"] = (oracle - lru) / (belady - lru)
            queued = [
                results[k]
                for k in results
                if k.startswith("hit_rate_") and k.endswith(f"+queue_{c}")
            ]
            if queued:
                out[f"gap_closed_best_queue_{c}"] = (max(queued) - lru) / (belady - lru)
    return out


class TieredResult(NamedTuple):
    hit_rate: float
    hits_by_tier: dict[TierKind, int]
    num_verified: int  # hit blocks whose bytes were compared with what was put
    num_failed_puts: int  # puts refused with CapacityExceeded (their blocks stay uncached)
    num_slow_blocks: int  # put straight into NVMe by the admission policy
    num_skipped_blocks: int  # not stored: refused by the admission policy


def block_payload(key: BlockKey) -> bytes:
    """A block's bytes: its key repeated, so any mix-up shows on a compare."""
    return key * (BLOCK_BYTES // len(key))


def tiered_config(
    workdir: Path,
    dram_blocks: int,
    nvme_blocks: int,
    policy: EvictionPolicyKind = EvictionPolicyKind.PREFIX_LRU,
    admission: AdmissionPolicyKind = AdmissionPolicyKind.ALL,
) -> Config:
    """DRAM of ``dram_blocks`` over NVMe of ``nvme_blocks`` (files under ``workdir``)."""
    nvme_bytes = nvme_blocks * BLOCK_BYTES
    return load_config(
        env={},
        overrides={
            "store.node_id": f"hitrate-{os.getpid()}",
            "store.block_bytes": str(BLOCK_BYTES),
            "store.eviction_policy": policy.value,
            "store.admission_policy": admission.value,
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
        stats = store.stats()
    return TieredResult(
        hits / max(1, total),
        dict(by_tier),
        num_verified,
        num_failed,
        stats.put_slow_blocks,
        stats.put_skipped_blocks,
    )


class TieredRow(NamedTuple):
    eviction: EvictionPolicyKind
    admission: AdmissionPolicyKind

    @property
    def name(self) -> str:
        suffix = "" if self.admission is AdmissionPolicyKind.ALL else f"+{self.admission.value}"
        return self.eviction.value + suffix


def tiered_rows(
    kinds: Sequence[EvictionPolicyKind], admissions: Sequence[AdmissionPolicyKind]
) -> list[TieredRow]:
    """Each eviction policy admitting all; then each other admission policy with the
    store's default eviction policy."""
    default = EvictionPolicyKind.PREFIX_LRU
    rows = [TieredRow(kind, AdmissionPolicyKind.ALL) for kind in kinds]
    return rows + [TieredRow(default, a) for a in admissions if a is not AdmissionPolicyKind.ALL]


def tiered_figures(
    trace: Trace,
    bar: Progress,
    dram_blocks: int,
    nvme_blocks: int,
    rows: Sequence[TieredRow],
) -> dict[str, float]:
    """Per row: ``hit_rate_tiered_<row>``, the share of hits from DRAM and, with an
    admission policy, how many blocks it put into NVMe directly or did not store."""
    requests = keyed(trace)
    task = bar.add_task("tiered store", total=trace.num_requests * len(rows))
    advance = functools.partial(bar.advance, task)
    results: dict[str, float] = {}
    start = time.perf_counter()
    for row in rows:
        bar.update(task, description=f"tiered {row.name}")
        workdir = Path(tempfile.mkdtemp(prefix="strata-hitrate-"))
        try:
            config = tiered_config(workdir, dram_blocks, nvme_blocks, row.eviction, row.admission)
            run = asyncio.run(simulate_tiered(requests, config, advance=advance))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        num_hits = sum(run.hits_by_tier.values())
        results[f"hit_rate_tiered_{row.name}"] = run.hit_rate
        share = run.hits_by_tier.get(TierKind.DRAM, 0) / max(1, num_hits)
        results[f"tiered_dram_share_{row.name}"] = share
        if row.admission is not AdmissionPolicyKind.ALL:
            results[f"tiered_slow_blocks_{row.name}"] = run.num_slow_blocks
            results[f"tiered_skipped_blocks_{row.name}"] = run.num_skipped_blocks
        if run.num_failed_puts:
            results[f"tiered_failed_puts_{row.name}"] = run.num_failed_puts
    results["tiered_sim_s"] = time.perf_counter() - start
    return results


def tiered_table(results: dict[str, float], rows: Sequence[TieredRow]) -> Table:
    """One line per tiered run: hit rate, DRAM share, what admission did."""
    table = Table(title="tiered store (DRAM over NVMe)", header_style="bold")
    for name in ("eviction", "admission", "hit rate", "DRAM share", "to NVMe", "not stored"):
        table.add_column(name, justify="left" if name in ("eviction", "admission") else "right")
    for row in rows:
        slow = results.get(f"tiered_slow_blocks_{row.name}", 0)
        skipped = results.get(f"tiered_skipped_blocks_{row.name}", 0)
        table.add_row(
            row.eviction.value,
            row.admission.value,
            f"{results[f'hit_rate_tiered_{row.name}']:.4f}",
            f"{results[f'tiered_dram_share_{row.name}']:.3f}",
            f"{slow:,.0f}",
            f"{skipped:,.0f}",
        )
    return table


def cost_figures(num_blocks: int, num_accesses: int, seed: int) -> dict[str, float]:
    """µs per access of each eviction policy with ``num_blocks`` resident."""
    results: dict[str, float] = {}
    for variant in VARIANTS[: len(EvictionPolicyKind)]:
        cost = access_cost(variant, num_blocks, num_accesses, seed)
        results[f"cost_{variant.name}_p50_us"] = cost.policy_p50_us
        results[f"cost_{variant.name}_p99_us"] = cost.policy_p99_us
        results[f"cost_index_{variant.name}_p50_us"] = cost.index_p50_us
        results[f"cost_index_{variant.name}_p99_us"] = cost.index_p99_us
    return results


def matrix(results: dict[str, float], capacities: Sequence[int]) -> Table:
    """Hit rates as one row per variant, one column per capacity."""
    names = sorted(
        {
            k[len("hit_rate_") :].rsplit("_", 1)[0]
            for k in results
            if k.startswith("hit_rate_") and k.rsplit("_", 1)[1].isdigit()
        },
        key=lambda n: -results[rate_key(n, capacities[-1])],
    )
    table = Table(title="prefix hit rate by capacity (blocks)", header_style="bold")
    table.add_column("policy")
    for c in capacities:
        table.add_column(f"{c:,}", justify="right")
    for name in names:
        table.add_row(name, *(f"{results[rate_key(name, c)]:.4f}" for c in capacities))
    return table


def plot(results: dict[str, float], capacities: Sequence[int], path: Path, title: str) -> None:
    """Hit rate vs capacity: a line per variant, the oracles, the bound, tiered stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    ax.set_prop_cycle(color=[plt.get_cmap("tab20")(i) for i in range(20)])
    names = [v.name for v in VARIANTS] + [
        k[len("hit_rate_") : -len(f"_{capacities[0]}")]
        for k in results
        if k.startswith("hit_rate_") and k.endswith(f"+queue_{capacities[0]}")
    ]
    for name in [*names, "oracle_admission", "belady"]:
        if rate_key(name, capacities[0]) not in results:
            continue
        ys = [results[rate_key(name, c)] for c in capacities]
        oracle = name in ("belady", "oracle_admission")
        ax.plot(capacities, ys, marker="o", linestyle="--" if oracle else "-", label=name)
    ax.axhline(results["hit_rate_bound"], color="grey", linestyle=":", label="unbounded")
    tiered_at = TIERED_DRAM_BLOCKS + TIERED_NVME_BLOCKS
    tiered = [k for k in results if k.startswith("hit_rate_tiered_")]
    if tiered:
        best = max(tiered, key=lambda k: results[k])
        label = f"store {TIERED_DRAM_BLOCKS:,}+{TIERED_NVME_BLOCKS:,} ({best[16:]})"
        ax.plot([tiered_at], [results[best]], "*", markersize=12, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("capacity (blocks)")
    ax.set_ylabel("prefix hit rate")
    ax.set_ylim(0, min(1.0, results["hit_rate_bound"] * 1.15 + 0.02))
    save_plot(fig, ax, title, path)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = _parse(argv)
    if args.trace is not None:
        full = load_trace(args.trace)
    else:
        full = WORKLOADS[args.workload](SYNTHETIC_REQUESTS, args.seed)
    trace = full.head(args.requests or (QUICK_REQUESTS if args.quick else None))
    capacities = QUICK_CAPACITIES if args.quick else CAPACITIES
    score_from = int(trace.num_requests * args.score_from)
    cost_blocks = args.cost_blocks or (QUICK_COST_BLOCKS if args.quick else COST_BLOCKS)
    config = {
        "trace": str(args.trace) if args.trace else f"synthetic {args.workload}",
        "trace_name": trace.name,
        "num_requests": trace.num_requests,
        "num_blocks": trace.num_blocks,
        "num_unique_blocks": trace.num_unique_blocks,
        "quick": args.quick,
        "quick_does": f"first {QUICK_REQUESTS:,} requests, capacities {QUICK_CAPACITIES},"
        f" cost at {QUICK_COST_BLOCKS:,} blocks"
        if args.quick
        else "-",
        "seed": args.seed,
        "block_bytes": BLOCK_BYTES,
        "capacities_blocks": list(capacities),
        "lookahead_s": args.lookahead_s,
        "score_from_request": score_from,
        "cost_blocks": cost_blocks,
        "cost_accesses": args.cost_accesses,
        "tiered_store": f"DRAM {TIERED_DRAM_BLOCKS:,} + NVMe {TIERED_NVME_BLOCKS:,} blocks",
    }
    with progress() as bar:
        results = index_figures(
            trace,
            capacities,
            bar,
            lookahead_s=args.lookahead_s,
            score_from=score_from,
            variants=args.variants,
            queue_variants=args.queue_variants or QUEUE_VARIANTS,
        )
        results.update(gap_figures(results, capacities))
        results.update(extension_figures(trace))
        rows = tiered_rows(
            args.tiered or tuple(EvictionPolicyKind),
            args.tiered_admission or tuple(AdmissionPolicyKind),
        )
        if not args.no_tiered:
            results.update(tiered_figures(trace, bar, TIERED_DRAM_BLOCKS, TIERED_NVME_BLOCKS, rows))
    if not args.no_cost:
        results.update(cost_figures(cost_blocks, args.cost_accesses, args.seed))
    console.print(matrix(results, capacities))
    if not args.no_tiered:
        console.print(tiered_table(results, rows))
    units = {k: "s" if k.endswith("_s") else "µs" if k.endswith("_us") else "" for k in results}
    targets = {k: t for k, t in _targets(capacities).items() if k in results}
    report("hitrate", config, results, units=units, targets=targets, json_path=args.json)
    default_plot = args.json.with_suffix(".png") if args.json else Path("bench/results/hitrate.png")
    plot_path = args.plot or default_plot
    plot(results, capacities, plot_path, f"prefix hit rate: {trace.name}")
    console.print(f"wrote {plot_path}")
    return results


def _targets(capacities: Sequence[int]) -> dict[str, Target]:
    """Every variant at least LRU's hit rate; the issue's absolute goals for chain_value."""
    targets = {
        rate_key(v.name, c): Target(1.0, of=rate_key("lru", c))
        for v in VARIANTS
        for c in capacities
        if v.name != "lru"
    }
    targets[rate_key("chain_value", 10_000)] = Target(TARGET_10K)
    targets[rate_key("chain_value", 1_000)] = Target(TARGET_1K)
    return targets


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = parser(
        "Prefix hit rate of Strata's eviction and admission policies on a Mooncake-format"
        f" trace. --quick replays the first {QUICK_REQUESTS:,} requests."
    )
    p.add_argument("--trace", type=Path, metavar="PATH", help=TRACE_HELP)
    p.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        default="chat",
        help="synthetic workload without --trace (default: chat)",
    )
    p.add_argument("--requests", type=int, metavar="N", help="replay the first N requests only")
    p.add_argument(
        "--lookahead-s",
        type=float,
        default=0.0,
        metavar="S",
        help="queue-aware rows: requests are known S seconds before service",
    )
    p.add_argument(
        "--score-from",
        type=float,
        default=0.0,
        metavar="F",
        help="count only requests after fraction F of the trace (0 <= F < 1)",
    )
    p.add_argument("--cost-blocks", type=int, metavar="N", help="resident blocks for the cost")
    p.add_argument(
        "--cost-accesses",
        type=int,
        default=COST_ACCESSES,
        metavar="N",
        help=f"timed accesses per policy (default {COST_ACCESSES:,})",
    )
    names = ", ".join(v.name for v in VARIANTS)
    p.add_argument("--variants", type=_names, metavar="A,B", help=f"rows to run, of: {names}")
    p.add_argument(
        "--queue-variants",
        type=_names,
        metavar="A,B",
        help=f"rows run with --lookahead-s (default: {', '.join(QUEUE_VARIANTS)})",
    )
    p.add_argument(
        "--tiered",
        type=_kinds,
        metavar="A,B",
        help="eviction policies of the tiered runs (default: all)",
    )
    p.add_argument(
        "--tiered-admission",
        type=_admissions,
        metavar="A,B",
        help="admission policies of the tiered runs, each with the default eviction policy"
        " (default: all)",
    )
    p.add_argument("--no-tiered", action="store_true", help="skip the tiered store runs")
    p.add_argument("--no-cost", action="store_true", help="skip the cost per access")
    p.add_argument("--plot", type=Path, metavar="PATH", help="PNG (default: --json path .png)")
    args = p.parse_args(argv)
    if args.trace is not None and not args.trace.is_file():
        p.error(f"--trace: no such file: {args.trace}")
    if not 0.0 <= args.score_from < 1.0:
        p.error(f"--score-from: must be in [0, 1), got {args.score_from}")
    known = {v.name for v in VARIANTS}
    for name in [*(args.variants or ()), *(args.queue_variants or ())]:
        if name not in known:
            p.error(f"--variants/--queue-variants: unknown variant {name!r}")
    if args.variants is not None and "lru" not in args.variants:
        p.error("--variants: must include lru (every figure is compared with it)")
    if args.lookahead_s < 0:
        p.error(f"--lookahead-s: must be >= 0, got {args.lookahead_s}")
    return args


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _kinds(text: str) -> tuple[EvictionPolicyKind, ...]:
    try:
        return tuple(EvictionPolicyKind(n) for n in _names(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _admissions(text: str) -> tuple[AdmissionPolicyKind, ...]:
    try:
        return tuple(AdmissionPolicyKind(n) for n in _names(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


if __name__ == "__main__":
    main()
