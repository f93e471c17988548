"""The cluster simulator's questions (issue 17, section 5), answered on a trace.

``--part answers``: colocated vs disaggregated vs Strata at equal GPU count (64 H100s:
eight Llama-3-70B TP8 instances) with Mooncake's SLOs (TTFT <= 30 s; TBT <= 100, 200,
300 ms, TBT = the mean of the slowest 10% of a request's token intervals). Each
configuration is swept over arrival rates (the trace's arrivals compressed or
stretched); its effective request capacity (the most requests a second served within
both SLOs) and goodput (the highest rate with 90% within them, DistServe's) come from
the sweep. Configurations:

  (i)   colocated: 8 vLLM-like instances (continuous batching, chunked prefill) with a
        local prefix cache in HBM only, round robin;
  (ii)  disaggregated: 6 prefill + 2 decode instances, each prefill node a local HBM
        prefix cache only, round robin;
  (ii+store)  (ii) with the global tiered store (HBM + DRAM + NVMe per node, peers read
        over RDMA), still round robin: what the store adds;
  (ii+routing) (ii) with cache-aware routing over the local caches: what routing adds alone;
  (iii) Strata: disaggregated + global tiered store + cache-aware routing.

``--part loads``: cache_aware against round_robin on the Strata cluster at offered
loads 0.5-0.9 (prefill work without reuse over the prefill instances' time), with where
each prompt token came from (HBM, DRAM, NVMe, peer) or that it was recomputed; once over
RDMA (8 x 400 Gb/s a node, as Mooncake) and once over 100 Gb/s TCP. least_loaded (queue
balancing, cache-blind) runs too, to tell what balancing alone buys from what the cache
adds.

``--part speed``: the simulator's own cost: synthetic requests on 64 instances
(48 prefill + 16 decode, Llama-3-8B profile), events/s, and how the cost grows with
requests and instances.

``--part error``: the simulator with the locally fitted profile against the real local
cluster replay (``bench.router --part e2e``), from the measured JSON files given with
``--measured``; it writes ``bench/reference/sim_error.json`` (the requests, the measured
figures, the fitted cost model and the simulator's figures) that
``tests/engine/sim/test_error.py`` replays, and the local profile
``engine/sim/profiles/local-cpu.json``.

Every part prints a table and writes JSON (``--json``); answers and loads draw PNGs.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import console, parser, report, save_plot
from engine.sim.capacity import geometric_scales
from engine.sim.cluster import ClusterSpec, Layout, TierSpec
from engine.sim.metrics import Slo
from engine.sim.profiles import load_profile
from engine.sim.report import plot_sweeps
from engine.sim.runs import run_once, sweep
from engine.sim.workload import SimRequest, at_rate, load_trace, synthetic
from kvstore.types import TierKind

GB = 1e9
BIG = "llama3-70b-8xh100"
TTFT_SLO_S = 30.0
TBT_SLOS_S = (0.1, 0.2, 0.3)
CAPACITY_GOAL = 1.6  # (iii) / (i) effective capacity at TBT <= 200 ms
RDMA_BPS = 400e9  # 8 x 400 Gb/s per node
TCP_BPS = 12.5e9  # 100 Gb/s
KV_70B = 327680


def _tiers(hbm: float, dram: float = 0.0, nvme: float = 0.0) -> dict[TierKind, TierSpec]:
    # HBM: the prefix cache is the engine's own memory (no copy); DRAM over PCIe 5 x16 on
    # each of the 8 GPUs (~25 GB/s effective each); one PCIe 4/5 NVMe drive at 7 GB/s.
    return {
        TierKind.HBM: TierSpec(hbm, 10e12),
        TierKind.DRAM: TierSpec(dram, 200e9),
        TierKind.NVME: TierSpec(nvme, 7e9),
    }


def gpu_configs() -> dict[str, ClusterSpec]:
    """The section-5 configurations: 64 GPUs each (see the module docstring)."""
    disaggregated = ClusterSpec(
        layout=Layout.DISAGGREGATED,
        num_prefill=6,
        num_decode=2,
        profile=BIG,
        block_tokens=512,
        shared=False,
        tiers=_tiers(300 * GB),  # 640 GB HBM - 140 GB weights - working memory
        network_bytes_per_s=RDMA_BPS,
        network_latency_s=20e-6,
        max_batch=128,
        kv_capacity_tokens=int(450 * GB // KV_70B),
        policy="round_robin",
    )
    colocated = replace(
        disaggregated,
        layout=Layout.COLOCATED,
        num_colocated=8,
        tiers=_tiers(150 * GB),  # the running sequences' KV takes the rest
        kv_capacity_tokens=int(300 * GB // KV_70B),
        chunk_tokens=512,  # of 512 and 2048, the better for TBT (see the README)
    )
    store = replace(disaggregated, shared=True, tiers=_tiers(300 * GB, 1500 * GB, 8000 * GB))
    return {
        "i_colocated": colocated,
        "ii_disaggregated": disaggregated,
        "ii_plus_store": store,
        "ii_plus_routing": replace(disaggregated, policy="cache_aware"),
        "iii_strata": replace(store, policy="cache_aware"),
    }


def trace_requests(path: Path | None, num: int, block_tokens: int, seed: int) -> list[SimRequest]:
    if path is None:  # no trace: synthetic requests of about the conversation trace's rate
        return synthetic(
            num, rate_per_s=3.4, block_tokens=block_tokens, seed=seed, prefix_blocks=12
        )
    return load_trace(path, block_tokens, limit=num)


def answers(requests: list[SimRequest], num_rates: int) -> tuple[dict[str, float], dict[str, Any]]:
    profile = load_profile(BIG)
    slos = [Slo(TTFT_SLO_S, tbt) for tbt in TBT_SLOS_S]
    scales = geometric_scales(0.25, 4.0, num_rates)
    results: dict[str, float] = {}
    sweeps: dict[str, list[dict[str, float]]] = {}
    for label, spec in gpu_configs().items():
        started = time.perf_counter()
        swept = sweep(spec, profile, requests, scales, slos)
        sweeps[label] = swept.points
        for key, value in swept.capacity.items():
            if key.startswith("effective_capacity_rps_tbt") or key.startswith("goodput_rps_tbt"):
                results[f"{key}_{label}"] = value
        console.print(f"{label}: {len(scales)} rates in {time.perf_counter() - started:.1f} s")
    for tbt in ("100", "200", "300"):
        cap = {label: results[f"effective_capacity_rps_tbt{tbt}_{label}"] for label in sweeps}
        results[f"capacity_ratio_tbt{tbt}"] = _ratio(cap["iii_strata"], cap["i_colocated"])
    cap = {label: results[f"effective_capacity_rps_tbt200_{label}"] for label in sweeps}
    results["disaggregation_adds_tbt200"] = _ratio(cap["ii_disaggregated"], cap["i_colocated"])
    results["store_adds_tbt200"] = _ratio(cap["ii_plus_store"], cap["ii_disaggregated"])
    results["routing_adds_on_store_tbt200"] = _ratio(cap["iii_strata"], cap["ii_plus_store"])
    results["routing_adds_alone_tbt200"] = _ratio(cap["ii_plus_routing"], cap["ii_disaggregated"])
    results["store_adds_on_routing_tbt200"] = _ratio(cap["iii_strata"], cap["ii_plus_routing"])
    results["capacity_headroom"] = results["capacity_ratio_tbt200"] / CAPACITY_GOAL
    return results, {"sweeps": sweeps}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf") if a > 0 else 1.0


def offered_scale(requests: list[SimRequest], spec: ClusterSpec, load: float) -> float:
    """The rate multiplier at which the prefill work without reuse is ``load`` of the
    prefill instances' time."""
    costs = load_profile(spec.profile).costs
    work_s = sum(costs.prefill_s(r.input_tokens, 0) for r in requests)
    span_s = requests[-1].arrival_s - requests[0].arrival_s
    return load * spec.num_prefill * span_s / work_s


def loads(
    requests: list[SimRequest], offered: list[float]
) -> tuple[dict[str, float], dict[str, Any]]:
    profile = load_profile(BIG)
    strata = gpu_configs()["iii_strata"]
    results: dict[str, float] = {}
    curves: dict[str, list[dict[str, float]]] = {}
    for network, bps in (("rdma", RDMA_BPS), ("tcp", TCP_BPS)):
        for policy in ("cache_aware", "round_robin", "least_loaded"):
            spec = replace(strata, policy=policy, network_bytes_per_s=bps)
            label = f"{policy}_{network}"
            curves[label] = []
            for load in offered:
                scaled = at_rate(requests, offered_scale(requests, spec, load))
                figures = run_once(spec, profile, scaled, Slo(TTFT_SLO_S, 0.2)).figures
                curves[label].append(dict(figures, offered_load=load))
                tag = f"{label}_load{load:g}"
                results[f"ttft_p90_ms_{tag}"] = figures["ttft_p90_ms"]
                for source in ("hbm", "dram", "nvme", "peer"):
                    results[f"hit_rate_{source}_{tag}"] = figures[f"hit_rate_{source}"]
                prompt = figures["tokens_loaded"] + figures["tokens_recomputed"]
                results[f"recomputed_share_{tag}"] = figures["tokens_recomputed"] / prompt
                results[f"recomputed_cached_share_{tag}"] = (
                    figures["tokens_recomputed_cached"] / prompt
                )
        for load in offered:
            a = results[f"ttft_p90_ms_cache_aware_{network}_load{load:g}"]
            b = results[f"ttft_p90_ms_round_robin_{network}_load{load:g}"]
            results[f"ttft_p90_ratio_{network}_load{load:g}"] = a / b if b else 1.0
    return results, {"curves": curves}


def speed(counts: list[int], instance_counts: list[int], seed: int) -> dict[str, float]:
    """Seconds and events/s of synthetic runs: requests grow at 64 instances, instances
    grow at the first request count."""
    profile = load_profile("llama3-8b-h100")
    results: dict[str, float] = {}
    runs = [(n, 64) for n in counts] + [(counts[0], k) for k in instance_counts if k != 64]
    for num, instances in runs:
        decode = instances // 4
        spec = ClusterSpec(num_prefill=instances - decode, num_decode=decode, block_tokens=512)
        rate = 0.6 * instances  # ~60% of what the prefill instances can take cold
        requests = synthetic(
            num, rate_per_s=rate, block_tokens=512, seed=seed, prefix_blocks=4, suffix_blocks=2
        )
        started = time.perf_counter()
        run = run_once(spec, profile, requests, None)
        wall = time.perf_counter() - started
        tag = f"{num}req_{instances}inst"
        results[f"wall_s_{tag}"] = wall
        results[f"events_per_s_{tag}"] = run.figures["events"] / wall
        results[f"us_per_request_{tag}"] = wall / num * 1e6
        console.print(f"{tag}: {wall:.1f} s, {run.figures['events'] / wall:,.0f} events/s")
    return results


def plot_loads(curves: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, points) in enumerate(curves.items()):
        style = "-" if label.endswith("rdma") else "--"
        xs = [p["offered_load"] for p in points]
        ax.plot(
            xs, [p["ttft_p90_ms"] for p in points], style, marker="o", color=f"C{i}", label=label
        )
    ax.set_yscale("log")
    ax.set_xlabel("offered load (prefill work without reuse / prefill time)")
    ax.set_ylabel("TTFT p90 (ms)")
    save_plot(fig, ax, "cache_aware vs round_robin, Llama-3-70B on 8x H100 nodes", path)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = parser(
        "The cluster simulator on a trace: colocated vs disaggregated vs Strata, routing at"
        " loads 0.5-0.9, the simulator's speed, and its error against the local cluster."
    )
    p.add_argument("--part", choices=("all", "answers", "loads", "speed", "error"), default="all")
    p.add_argument("--trace", type=Path, help="Mooncake-format trace (default: synthetic)")
    p.add_argument("--requests", type=int, help="the trace's first N requests")
    p.add_argument(
        "--measured", type=Path, nargs="*", default=[], help="--part error: bench.router JSONs"
    )
    p.add_argument("--plot", type=Path, help="PNG path stem (default: --json's)")
    args = p.parse_args(argv)
    if args.trace is not None and not args.trace.is_file():
        p.error(f"--trace: no such file: {args.trace}")
    results: dict[str, float] = {}
    shown: dict[str, Any] = {"part": args.part, "quick": args.quick, "seed": args.seed}
    stem = args.plot or (args.json.with_suffix("") if args.json else None)
    if args.part in ("all", "answers", "loads"):
        num = args.requests or (2000 if args.quick else 4000)
        requests = trace_requests(args.trace, num, 512, args.seed)
        shown |= {"trace": str(args.trace or "synthetic"), "requests": len(requests)}
    if args.part in ("all", "answers"):
        figures, extra = answers(requests, 7 if args.quick else 11)
        results |= figures
        shown |= {"ttft_slo_s": TTFT_SLO_S, "tbt_slos_s": TBT_SLOS_S, "gpus": 64}
        if stem is not None:
            plot_sweeps(
                extra["sweeps"],
                Path(f"{stem}_answers.png"),
                "Llama-3-70B, 64 H100s",
                ttft_slo_s=TTFT_SLO_S,
                tbt_slo_s=0.2,
            )
    if args.part in ("all", "loads"):
        figures, extra = loads(
            requests, [0.5, 0.7, 0.9] if args.quick else [0.5, 0.6, 0.7, 0.8, 0.9]
        )
        results |= figures
        if stem is not None:
            plot_loads(extra["curves"], Path(f"{stem}_loads.png"))
    if args.part in ("all", "speed"):
        counts = [20_000, 40_000] if args.quick else [25_000, 50_000, 100_000]
        results |= speed(counts, [16, 32, 64], args.seed)
    if args.part == "error" or (args.part == "all" and args.measured):
        from bench.sim_error import error_part

        results |= error_part(args.measured, args.trace, args.seed)
    report("sim", shown, results, json_path=args.json)
    return results


if __name__ == "__main__":
    main()
