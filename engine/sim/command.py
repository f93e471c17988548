"""``kvengine simulate``: replay a trace through a described cluster; ``--plan`` sizes one.

    kvengine simulate --cluster cluster.toml --trace trace.jsonl [--requests N]
        [--rate-scale X] [--profile NAME|PATH] [--policy NAME] [--ttft-slo S --tbt-slo S]
        [--sweep LOW:HIGH:N] [--json PATH] [--plot PATH]
    kvengine simulate --synthetic N --rate RPS ...          a seeded synthetic workload
    kvengine simulate ... --plan [--max-instances N] [--dram GB,GB] [--nvme GB,GB]

Prints the run's figures (``metrics``), the utilisation of every instance and the
simulator's speed (events/s); ``--sweep`` adds goodput and effective capacity over a
range of rates (and a latency-vs-rate PNG with ``--plot``); ``--plan`` prints the
cheapest configuration that meets the SLOs. Bad input exits 2 with a message naming it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console

from engine.sim import report
from engine.sim.capacity import geometric_scales
from engine.sim.cluster import ClusterSpec, load_cluster
from engine.sim.metrics import Slo, utilisation
from engine.sim.planner import Candidate, plan
from engine.sim.profiles import Profile, load_profile
from engine.sim.runs import run_once, sweep
from engine.sim.workload import SimRequest, at_rate, load_trace, synthetic
from kvstore.errors import ConfigError

SUMMARY_KEYS = (
    "rate_rps",
    "ttft_p50_ms",
    "ttft_p90_ms",
    "ttft_p99_ms",
    "tbt_p50_ms",
    "tbt_p90_ms",
    "tbt_p99_ms",
    "slo_attainment",
    "hit_rate",
    "utilisation_mean",
)
GB = 1e9


def add_parser(commands: Any) -> None:
    """Register ``simulate`` on the ``kvengine`` subparsers."""
    p = commands.add_parser("simulate", help="simulate a cluster on a trace; --plan sizes one")
    p.add_argument("--cluster", type=Path, help="cluster description (TOML); default: built-in")
    p.add_argument("--trace", type=Path, help="Mooncake-format JSONL trace")
    p.add_argument("--synthetic", type=int, metavar="N", help="N synthetic requests instead")
    p.add_argument("--rate", type=float, default=4.0, help="synthetic arrival rate (req/s)")
    p.add_argument("--block-tokens", type=int, help="the trace's tokens per hash id")
    p.add_argument("--requests", type=int, metavar="N", help="the trace's first N requests")
    p.add_argument("--max-output-tokens", type=int, metavar="N")
    p.add_argument("--rate-scale", type=float, default=1.0, help="arrival rate x this")
    p.add_argument("--profile", help="cost profile name or file (overrides the cluster's)")
    p.add_argument("--policy", help="routing policy (overrides router.policy)")
    p.add_argument("--ttft-slo", type=float, default=30.0, help="seconds (attainment)")
    p.add_argument("--tbt-slo", type=float, default=0.2, help="seconds (attainment)")
    p.add_argument("--sweep", metavar="LOW:HIGH:N", help="rate multipliers to sweep")
    p.add_argument("--plan", action="store_true", help="search P:D and DRAM/NVMe sizes")
    p.add_argument("--max-instances", type=int, default=8)
    p.add_argument("--dram", default="0,500,2000", help="per-node DRAM options, GB")
    p.add_argument("--nvme", default="0,8000", help="per-node NVMe options, GB")
    p.add_argument("--target", type=float, default=0.9, help="--plan: SLO attainment to meet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures as JSON")
    p.add_argument("--plot", type=Path, help="--sweep: latency-vs-rate PNG")


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    """Raises ``ConfigError`` (naming the flag or key) for bad input."""
    console = console or Console()
    spec = load_cluster(args.cluster) if args.cluster else ClusterSpec()
    if args.policy:
        spec = replace(spec, policy=args.policy)
    if args.block_tokens is not None:
        if args.block_tokens < 1:
            raise ConfigError("--block-tokens", "must be >= 1")
        spec = replace(spec, block_tokens=args.block_tokens)
    profile = load_profile(args.profile or spec.profile)
    slo = _slo(args)
    requests = _requests(args, spec)
    document: dict[str, Any] = {"config": _config(args, spec, profile.name)}
    setup = Setup(spec, profile, requests, slo)
    if args.plan:
        return _plan(args, setup, console, document)
    started = time.perf_counter()
    once = run_once(spec, profile, requests, slo, seed=args.seed)
    wall_s = time.perf_counter() - started
    figures = dict(once.figures, wall_s=wall_s, events_per_s=once.figures["events"] / wall_s)
    document["runs"] = {"run": figures}
    document["utilisation"] = utilisation(once.result.busy_s, once.result.records)
    console.print(report.table(f"{profile.name}, {spec.policy}", {"run": figures}, SUMMARY_KEYS))
    shares = document["utilisation"]
    console.print(report.table("utilisation per instance", {"utilisation": shares}, list(shares)))
    tiers = ", ".join(
        f"{k} {figures[f'hit_rate_{k}']:.3f}" for k in ("hbm", "dram", "nvme", "peer")
    )
    console.print(
        f"hit rate by tier: {tiers}; tokens loaded {figures['tokens_loaded']:,.0f},"
        f" recomputed {figures['tokens_recomputed']:,.0f}"
    )
    console.print(
        f"simulated {len(requests):,} requests on {spec.num_instances} instances:"
        f" {figures['events']:,.0f} events in {wall_s:.2f} s"
        f" ({figures['events_per_s']:,.0f} events/s)"
    )
    if args.sweep:
        _sweep(args, setup, console, document)
    if args.json:
        report.write_json(args.json, document)
        console.print(f"wrote {args.json}")
    return 0


def _slo(args: argparse.Namespace) -> Slo:
    if args.ttft_slo <= 0 or args.tbt_slo <= 0:
        raise ConfigError("--ttft-slo/--tbt-slo", "must be > 0")
    return Slo(args.ttft_slo, args.tbt_slo)


def _requests(args: argparse.Namespace, spec: ClusterSpec) -> list[SimRequest]:
    if (args.trace is None) == (args.synthetic is None):
        raise ConfigError("--trace/--synthetic", "give exactly one of them")
    if args.rate_scale <= 0:
        raise ConfigError("--rate-scale", f"must be > 0, got {args.rate_scale}")
    if args.synthetic is not None:
        if args.synthetic < 1 or args.rate <= 0:
            raise ConfigError("--synthetic/--rate", "need N >= 1 and a rate > 0")
        requests = synthetic(
            args.synthetic, rate_per_s=args.rate, block_tokens=spec.block_tokens, seed=args.seed
        )
    else:
        if not args.trace.is_file():
            raise ConfigError("--trace", f"no such file: {args.trace}")
        if args.requests is not None and args.requests < 1:
            raise ConfigError("--requests", "must be >= 1")
        requests = load_trace(
            args.trace,
            spec.block_tokens,
            limit=args.requests,
            max_output_tokens=args.max_output_tokens,
        )
    if not requests:
        raise ConfigError("--trace", "holds no request")
    return at_rate(requests, args.rate_scale)


def _config(args: argparse.Namespace, spec: ClusterSpec, profile: str) -> dict[str, Any]:
    return {
        "layout": spec.layout.value,
        "instances": spec.num_instances,
        "num_prefill": spec.num_prefill,
        "num_decode": spec.num_decode,
        "profile": profile,
        "policy": spec.policy,
        "shared_store": spec.shared,
        "block_tokens": spec.block_tokens,
        "tiers_bytes": {t.value: s.capacity_bytes for t, s in spec.tiers.items()},
        "trace": str(args.trace) if args.trace else f"synthetic {args.synthetic}",
        "rate_scale": args.rate_scale,
        "ttft_slo_s": args.ttft_slo,
        "tbt_slo_s": args.tbt_slo,
        "seed": args.seed,
    }


class Setup(NamedTuple):
    spec: ClusterSpec
    profile: Profile
    requests: list[SimRequest]
    slo: Slo


def _sweep(args: argparse.Namespace, setup: Setup, console: Console, doc: dict[str, Any]) -> None:
    try:
        low, high, num = args.sweep.split(":")
        scales = geometric_scales(float(low), float(high), int(num))
    except ValueError as exc:
        raise ConfigError("--sweep", f"want LOW:HIGH:N, 0 < LOW < HIGH, N >= 2 ({exc})") from exc
    spec, profile, requests, slo = setup
    result = sweep(spec, profile, requests, scales, [slo])
    doc["sweeps"] = {"run": result.points}
    doc["capacity"] = {"run": result.capacity}
    rows = {f"x{p['rate_scale']:.3g}": p for p in result.points}
    console.print(report.table("sweep over arrival rates", rows, SUMMARY_KEYS))
    console.print(report.table("capacity", {"run": result.capacity}, tuple(result.capacity)))
    if args.plot:
        title = f"{profile.name}: {spec.policy}"
        report.plot_sweeps(
            {"run": result.points}, args.plot, title, ttft_slo_s=slo.ttft_s, tbt_slo_s=slo.tbt_s
        )
        console.print(f"wrote {args.plot}")


def _plan(args: argparse.Namespace, setup: Setup, console: Console, doc: dict[str, Any]) -> int:
    try:
        dram = [float(x) * GB for x in args.dram.split(",")]
        nvme = [float(x) * GB for x in args.nvme.split(",")]
    except ValueError as exc:
        raise ConfigError("--dram/--nvme", f"want comma-separated GB, e.g. 0,500 ({exc})") from exc
    if not 0 < args.target <= 1:
        raise ConfigError("--target", "must be in (0, 1]")
    if args.max_instances < 2:
        raise ConfigError("--max-instances", "must be >= 2")
    spec, profile, requests, slo = setup
    result = plan(
        spec,
        profile,
        requests,
        slo,
        max_instances=args.max_instances,
        dram_options=dram,
        nvme_options=nvme,
        target=args.target,
    )
    rows = {
        _label(c): {"gpus": float(c.gpus), "slo_attainment": c.attainment} for c in result.tried
    }
    console.print(report.rows_table("configurations tried", rows, ("gpus", "slo_attainment")))
    doc["plan"] = {
        "best": None if result.best is None else asdict(result.best),
        "tried": [asdict(c) for c in result.tried],
    }
    if args.json:
        report.write_json(args.json, doc)
    if result.best is None:
        console.print(f"no configuration up to {args.max_instances} instances meets the SLOs")
        return 1
    console.print(
        f"cheapest: {_label(result.best)} ({result.best.gpus} GPUs):"
        f" {result.best.attainment:.1%} of requests meet TTFT <= {slo.ttft_s:g} s"
        f" and TBT <= {slo.tbt_s:g} s"
    )
    return 0


def _label(c: Candidate) -> str:
    return (
        f"{c.num_prefill} prefill + {c.num_decode} decode, per node DRAM"
        f" {c.dram_bytes / GB:g} GB, NVMe {c.nvme_bytes / GB:g} GB"
    )
