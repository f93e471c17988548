"""The cache-aware router's benchmark: how long a routing decision takes at cluster scale
(``--part decision``, measured in ``bench.router_decision``), and what the policy buys end
to end (``--part e2e``).

End to end (``end_to_end``): a ``bench.cluster.LocalCluster`` (Redis, two store nodes
each with its own prefill worker, one decode worker; each node's DRAM tier holds
``store_share`` of the slice's working set, so placement matters and blocks on the other
node cost a peer fetch) replays a slice of a Mooncake-format trace (``--trace``; default
a seeded synthetic trace of the same shape, ``bench.traces.synthetic_trace``)
``repeats`` times per policy in ABBA order (cache-aware first), each policy's runs
pooled, after one unmeasured warm-up replay of the first ``warmup_requests``. Every run
starts cold on the same processes: the stores are flushed (DRAM tier and global index
emptied) before it, and all use one cost model, profiled once on the cluster at start.
Scaled for a CPU: each hash id is a fixed block of ``block_tokens`` seeded random tokens
(equal ids, equal prefixes), prompts keep their first ``max_blocks`` ids, outputs
``min(output_length, max_output_tokens)`` tokens, arrival times are the trace's times x
``time_scale``. Requests go to the router in this process (``open_router``,
``Router.stream``) at their arrival times, all concurrently. Per request: TTFT =
``Router.stream`` called -> its first chunk (so it includes the placement's store
lookups); the first chunk's ``cached_tokens`` (reused from anywhere) and
``cached_remote_tokens`` (of those, served by the other node); its inter-token
intervals (ITL: between successive streamed tokens as this process receives them;
``itl_p50_ms`` / ``itl_p90_ms`` over every interval of the slice). Hit rates are
token-weighted over the slice: ``hit_rate`` = cached / prompt tokens,
``local_hit_rate`` = (cached - remote) / prompt tokens. Where the cores went
(``cpu_figures``): each role's CPU seconds during the replay (from ``/proc``) over its
wall seconds, and the prefill workers' CPU seconds over what the fitted cost model
predicts for the prefill work they did; where the TTFT went (``ttft_parts``) by the
router's placement and the prefill worker's own timings of each request; and the
workers' own counters over the replay (``worker_figures``: the decode worker's steps
against the fitted step, where the prefill threads' time went).

Beside the measured figures, ``model_*`` figures replay the same requests through the
same policy objects and cost model on an ideal cluster (``bench.router_model``: FIFO
prefill instances that take exactly the predicted time, LRU nodes of the same capacity):
``model_ttft_p90_ratio`` is the most a policy can gain at this load, so a measured ratio
near it says the implementation loses nothing and the load, not the router, sets the
figure. ``offered_load`` is the replay's prefill work without reuse, per the fitted cost
model, over the prefill instances' time.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import shutil
import statistics
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bench.cluster import (
    ClusterSpec,
    LocalCluster,
    PolicyRun,
    TimedRequest,
    page_bytes,
    pooled,
    run_policy,
)
from bench.cluster_costs import FittedCosts, fit_costs
from bench.common import Target, console, parser, progress, report, save_plot
from bench.hitrate import TRACE_HELP
from bench.models import ModelShape
from bench.router_decision import DECISION_BUDGET_US, QUICK, DecisionConfig, decision_latency
from bench.router_model import compare
from bench.traces import load_trace, synthetic_trace
from engine.config import ModelSection
from engine.router.costs import CostModel

E2E_POLICIES = ("cache_aware", "round_robin")  # run in this order
TTFT_P90_GOAL = 0.8  # target: cache-aware TTFT p90 <= 0.8 x round robin's
PAGE_TOKENS = 16  # the engine's KV page and store block
TOKEN_IDS = (3, 256)  # prompt tokens come from [3, 256): not special in either model
SYNTHETIC_BURST_MS = 3000  # the conversation trace's requests come in bursts every 3 s


@dataclass(frozen=True, slots=True)
class EndToEndConfig:
    num_requests: int = 1200  # the trace's first N requests
    block_tokens: int = 32  # tokens per trace hash id (a multiple of PAGE_TOKENS)
    max_blocks: int = 64  # hash ids kept per prompt (its first ones)
    max_output_tokens: int = 8
    time_scale: float = 0.6  # arrival times x this
    store_share: float = 0.25  # each node's DRAM tier: this share of the working set
    lookup_timeout_s: float = 0.02  # router.lookup_timeout_s (its default)
    tiny_model: bool = False  # the built-in tiny model instead of ModelShape()
    pin: bool = True  # each prefill worker on a core of its own
    peer_fetch: bool = True  # store nodes read the blocks they miss from each other
    repeats: int = 2  # replays per policy, in ABBA order, pooled (cancels a drifting host)
    warmup_requests: int = 100  # replayed once, unmeasured, before the first policy


QUICK_E2E = EndToEndConfig(
    num_requests=300, block_tokens=16, time_scale=0.25, repeats=1, warmup_requests=40
)


class MoreThan(Target):
    """A figure's goal: ``key > ratio * of`` (strictly)."""

    __slots__ = ()

    def met(self, results: dict[str, float], key: str) -> bool:
        return results[key] > self.ratio * (results[self.of] if self.of else 1.0)

    def describe(self) -> str:
        return f"> {self.ratio:g} x {self.of}" if self.of else f"> {self.ratio:g}"


def trace_requests(
    path: Path | None, config: EndToEndConfig, seed: int
) -> tuple[str, list[TimedRequest]]:
    """The first ``num_requests`` requests of the trace at ``path`` (None: synthetic),
    scaled as ``config`` says; and the trace's name."""
    if path is None:
        trace = synthetic_trace(config.num_requests, seed)
        times_ms, outputs = _synthetic_timings(config.num_requests, seed)
    else:
        trace = load_trace(path).head(config.num_requests)
        times_ms, outputs = _file_timings(path, trace.num_requests)
    first = min(times_ms, default=0.0)
    requests = [
        TimedRequest(
            (t - first) / 1000 * config.time_scale,
            tuple(ids[: config.max_blocks]),
            max(1, min(out, config.max_output_tokens)),
        )
        for t, ids, out in zip(times_ms, trace.requests, outputs, strict=True)
    ]
    return trace.name, requests


def _file_timings(path: Path, num_requests: int) -> tuple[list[float], list[int]]:
    """``timestamp`` (ms) and ``output_length`` of a Mooncake trace's first requests."""
    times_ms: list[float] = []
    outputs: list[int] = []
    with path.open() as lines:
        for line in lines:
            if len(times_ms) == num_requests:
                break
            if line.strip():
                row = json.loads(line)
                times_ms.append(float(row["timestamp"]))
                outputs.append(int(row["output_length"]))
    return times_ms, outputs


def _synthetic_timings(num_requests: int, seed: int) -> tuple[list[float], list[int]]:
    """Arrivals shaped like the conversation trace's: bursts of 4-16 requests every
    ``SYNTHETIC_BURST_MS`` (about 3.3 requests a second); outputs lognormal around 330."""
    rng = random.Random(seed + 1)
    times_ms: list[float] = []
    burst = 0
    while len(times_ms) < num_requests:
        times_ms += [float(burst * SYNTHETIC_BURST_MS)] * rng.randint(4, 16)
        burst += 1
    outputs = [max(1, round(rng.lognormvariate(5.8, 0.8))) for _ in range(num_requests)]
    return times_ms[:num_requests], outputs


class BlockTokens:
    """Each hash id's fixed block of ``block_tokens`` tokens, drawn from a generator
    seeded with (seed, id): equal ids give equal blocks, so requests that share leading
    ids share a token prefix (and its store blocks), and no others do."""

    def __init__(self, block_tokens: int, seed: int) -> None:
        self.block_tokens = block_tokens
        self.seed = seed
        self._blocks: dict[int, list[int]] = {}

    def prompt(self, hash_ids: Sequence[int]) -> list[int]:
        tokens: list[int] = []
        for h in hash_ids:
            block = self._blocks.get(h)
            if block is None:
                rng = np.random.default_rng([self.seed, h])
                block = [int(t) for t in rng.integers(*TOKEN_IDS, self.block_tokens)]
                self._blocks[h] = block
            tokens += block
        return tokens


def policy_figures(policy: str, run: PolicyRun, costs: CostModel) -> dict[str, float]:
    """One policy's measured figures (see the module docstring), named ``*_<policy>``."""
    outcomes = run.outcomes
    prompt = sum(o.prompt_tokens for o in outcomes)
    cached = sum(o.cached_tokens for o in outcomes)
    remote = sum(o.remote_tokens for o in outcomes)
    ttft_ms = np.array([o.ttft_s for o in outcomes]) * 1e3
    busiest = max(Counter(o.prefill for o in outcomes).values())
    num_lookups = max(1, sum(run.lookups.values()))
    late_ms = np.array([o.late_s for o in outcomes]) * 1e3
    itl_ms = np.array([s for o in outcomes for s in o.itl_s]) * 1e3
    return {
        f"local_hit_rate_{policy}": (cached - remote) / prompt,
        f"hit_rate_{policy}": cached / prompt,
        f"ttft_p50_ms_{policy}": float(np.percentile(ttft_ms, 50)),
        f"ttft_p90_ms_{policy}": float(np.percentile(ttft_ms, 90)),
        f"ttft_mean_ms_{policy}": float(ttft_ms.mean()),
        f"busiest_prefill_share_{policy}": busiest / len(outcomes),
        f"lookup_timeout_share_{policy}": run.lookups.get("timed_out", 0) / num_lookups,
        f"pulled_block_share_{policy}": run.pulled_blocks * PAGE_TOKENS / prompt,
        f"send_late_p99_ms_{policy}": float(np.percentile(late_ms, 99)),
        f"rejected_share_{policy}": sum(o.num_rejections > 0 for o in outcomes) / len(outcomes),
        f"others_cpu_share_{policy}": run.others_cpu_share,
        f"itl_p50_ms_{policy}": float(np.percentile(itl_ms, 50)) if itl_ms.size else 0.0,
        f"itl_p90_ms_{policy}": float(np.percentile(itl_ms, 90)) if itl_ms.size else 0.0,
        **cpu_figures(policy, run, costs),
        **ttft_parts(policy, run, costs),
        **worker_figures(policy, run, costs),
    }


def cpu_figures(policy: str, run: PolicyRun, costs: CostModel) -> dict[str, float]:
    """Where the cores went during the replay: each role's mean cores in use
    (``cpu_cores_<role>``: its CPU seconds over the replay's wall seconds), the seconds
    its threads waited on a run queue for a core per CPU second (``cpu_wait_over_cpu_<role>``:
    how crowded the cores were when it had work), and the
    prefill workers' CPU seconds over the prefill seconds the fitted cost model predicts
    for the work they did (``prefill_cpu_over_fit``: above 1, the work itself costs more
    than the fit says; the rest of a slowdown is waiting for a core)."""
    figures = {
        f"cpu_cores_{role}_{policy}": cpu_s / run.wall_s for role, cpu_s in run.cpu_s.items()
    }
    figures |= {
        f"cpu_wait_over_cpu_{role}_{policy}": run.wait_s.get(role, 0.0) / cpu_s
        for role, cpu_s in run.cpu_s.items()
        if cpu_s > 0
    }
    fitted_s = sum(
        costs.prefill_s(o.prompt_tokens - o.cached_tokens, o.cached_tokens) for o in run.outcomes
    )
    figures[f"prefill_cpu_over_fit_{policy}"] = run.cpu_s.get("prefill", 0.0) / fitted_s
    figures[f"wall_s_{policy}"] = run.wall_s
    return figures


def worker_figures(policy: str, run: PolicyRun, costs: CostModel) -> dict[str, float]:
    """The workers during the replay, by their own clocks. Decode: its steps' mean wall
    milliseconds (``decode_step_ms``), of which its thread was on a core
    (``decode_step_cpu_ms``), the mean batch, and the step the fitted cost model predicts
    for the mean batch and context (``decode_step_fit_ms``): steps slower than the fit at
    equal CPU wait for a core; CPU above the fit, the step's work costs more than the
    profile measured; of a step's wall time, the decode thread waited on a run queue for
    a core ``decode_step_wait_ms`` (the rest off a core it was blocked). Prefill: a
    prompt's mean milliseconds of the prefill thread in each part (``prefill_<part>_ms``:
    admit, forward, pass end, finish; see ``PrefillStats``) and the shares of the forward
    passes' wall time the thread was on a core (``prefill_forward_cpu_share``) and waiting
    for one (``prefill_forward_wait_share``)."""
    counters = run.counters
    figures: dict[str, float] = {}
    steps = counters.get("decode_steps", 0.0)
    if steps:
        batch = counters["decode_batched_tokens"] / steps
        context = counters["decode_batched_context_tokens"] / steps
        fit_s = costs.decode_base_s + costs.decode_per_seq_s * batch
        figures |= {
            f"decode_steps_{policy}": steps,
            f"decode_mean_batch_{policy}": batch,
            f"decode_step_ms_{policy}": 1e3 * counters["decode_step_s"] / steps,
            f"decode_step_cpu_ms_{policy}": 1e3 * counters["decode_step_cpu_s"] / steps,
            f"decode_step_wait_ms_{policy}": 1e3 * counters["decode_step_wait_s"] / steps,
            f"decode_step_fit_ms_{policy}": 1e3
            * (fit_s + costs.decode_per_context_token_s * context),
        }
    prompts = counters.get("prefill_requests", 0.0)
    if prompts:
        for part in ("admit", "forward", "pass_end", "finish"):
            figures[f"prefill_{part}_ms_{policy}"] = 1e3 * counters[f"prefill_{part}_s"] / prompts
        forward_s = counters["prefill_forward_s"]
        for clock in ("cpu", "wait"):
            figures[f"prefill_forward_{clock}_share_{policy}"] = (
                counters[f"prefill_forward_{clock}_s"] / forward_s if forward_s else 0.0
            )
    return figures


def ttft_parts(policy: str, run: PolicyRun, costs: CostModel) -> dict[str, float]:
    """Where a request's TTFT went, from the prefill worker's own timings: waiting at
    the worker (``prefill_queue``), admitted to finished there (``prefill_compute``:
    computing, loading, sharing passes with other prompts), and the rest (``outside``:
    the router's lookups, the hand-off through the decode worker, the first chunk's
    way back), and of that the router's placement alone (``router_place``: store
    lookups and the policy); p50 and p90 of each. ``prefill_compute_over_fit_p50``: the median over
    requests of the worker's compute seconds over the fitted cost model's prediction for
    that prompt alone (above 1: batched with others, or slowed by the host)."""
    outcomes = run.outcomes
    parts = {
        "router_place": [o.place_s for o in outcomes],
        "prefill_queue": [o.prefill_queue_s for o in outcomes],
        "prefill_compute": [o.prefill_compute_s for o in outcomes],
        "outside_prefill": [o.ttft_s - o.prefill_queue_s - o.prefill_compute_s for o in outcomes],
    }
    figures = {
        f"{name}_p{q}_ms_{policy}": float(np.percentile(np.array(values) * 1e3, q))
        for name, values in parts.items()
        for q in (50, 90)
    }
    stretch = [
        o.prefill_compute_s / costs.prefill_s(o.prompt_tokens - o.cached_tokens, o.cached_tokens)
        for o in outcomes
    ]
    figures[f"prefill_compute_over_fit_p50_{policy}"] = float(np.median(stretch))
    return figures


class EndToEnd(NamedTuple):
    results: dict[str, float]
    shown: dict[str, Any]  # the set-up, for the report's config line
    ttft_ms: dict[str, list[float]]  # per policy
    model_ttft_ms: dict[str, list[float]]  # per policy, in the queueing model


def end_to_end(config: EndToEndConfig, trace: Path | None, seed: int) -> EndToEnd:
    """Replay the trace slice under each of ``E2E_POLICIES`` (see the module docstring)."""
    if config.block_tokens % PAGE_TOKENS:
        raise ValueError(f"block_tokens must be a multiple of {PAGE_TOKENS}")
    name, requests = trace_requests(trace, config, seed)
    blocks = BlockTokens(config.block_tokens, seed)
    prompts = [blocks.prompt(r.hash_ids) for r in requests]
    workdir = Path(tempfile.mkdtemp(prefix="strata-bench-router-"))
    try:
        model = None if config.tiny_model else ModelShape().write(workdir / "model", seed)
        block_bytes = page_bytes(model, PAGE_TOKENS)
        unique_ids = len({h for r in requests for h in r.hash_ids})
        working_set = unique_ids * config.block_tokens // PAGE_TOKENS * block_bytes
        longest = max(len(p) for p in prompts) // PAGE_TOKENS * block_bytes
        store_bytes = max(int(config.store_share * working_set), 4 * longest)
        spec = ClusterSpec(
            model, block_bytes, store_bytes, pin=config.pin, peer_fetch=config.peer_fetch
        )
        with LocalCluster(spec) as cluster:
            flags = {
                **cluster.router_overrides(),
                "engine.model": str(model or ""),
                "router.lookup_timeout_s": str(config.lookup_timeout_s),
            }
            replay = _run_policies(
                cluster,
                flags,
                requests,
                prompts,
                model=model,
                costs_path=workdir / "costs.json",
                repeats=config.repeats,
                warmup=config.warmup_requests,
            )
            runs, (costs, side) = asyncio.run(replay)
            pinned = [cores for cores in cluster.pinned.values()]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results: dict[str, float] = {}
    for policy, run in runs.items():
        results.update(policy_figures(policy, run, costs))
    ratio = results["ttft_p90_ms_cache_aware"] / results["ttft_p90_ms_round_robin"]
    results["ttft_p90_ratio"] = ratio
    results["ttft_p90_headroom"] = TTFT_P90_GOAL / ratio
    span_s = max(r.arrival_s for r in requests) or 1.0
    work_s = sum(costs.prefill_s(len(p), 0) for p in prompts)
    results["offered_load"] = work_s / (span_s * spec.num_prefills)
    capacity_blocks = store_bytes // (block_bytes * (config.block_tokens // PAGE_TOKENS))
    model_figures, model_ttft_ms = compare(
        E2E_POLICIES,
        requests,
        costs,
        block_tokens=config.block_tokens,
        capacity_blocks=capacity_blocks,
        num_prefills=spec.num_prefills,
        peer_fetch=config.peer_fetch,
    )
    results.update(model_figures)
    shown = {
        "trace": name,
        "prompt_tokens_mean": round(statistics.fmean(len(p) for p in prompts)),
        "replay_span_s": round(span_s, 1),
        "model": "tiny built-in" if model is None else asdict(ModelShape()),
        "store_bytes_per_node": store_bytes,
        "working_set_bytes": working_set,
        "prefill_worker_cores": pinned or "not pinned",
        "host_cores": len(os.sched_getaffinity(0)),
        "prefill_chunk_tokens": ModelSection().chunk_tokens,  # the workers' defaults
        "prefill_max_batch_tokens": ModelSection().max_batch_tokens,
        "decode_max_batch": ModelSection().max_batch,
        "between_policies": "same processes; stores flushed (DRAM + global index)",
        "cost_model": costs.to_dict(),
        "host_prefill_side_share": round(side.prefill, 4),
        "host_decode_side_share": round(side.decode, 4),
        "predicted_prefill_ms_1k": round(costs.prefill_s(1024, 0) * 1e3, 1),
    }
    ttft_ms = {p: [o.ttft_s * 1e3 for o in run.outcomes] for p, run in runs.items()}
    return EndToEnd(results, shown, ttft_ms, model_ttft_ms)


async def _run_policies(
    cluster: LocalCluster,
    flags: dict[str, str],
    requests: Sequence[TimedRequest],
    prompts: Sequence[list[int]],
    *,
    model: Path | None,
    costs_path: Path,
    repeats: int,
    warmup: int,
) -> tuple[dict[str, PolicyRun], FittedCosts]:
    """Fit the cost model, warm the cluster up, then replay under each policy ``repeats``
    times (ABBA order); each policy's runs pooled.

    The warm-up replays the first ``warmup`` requests under round robin, unmeasured, then
    flushes the stores: the first replay on fresh processes is otherwise slower (memory
    touched for the first time, kernels prepared for new shapes), whichever policy it is.
    """
    console.print("profiling the cluster for the router's cost model ...")
    fitted = await fit_costs(cluster, model, costs_path)
    if warmup > 0:
        console.print(f"warming up on the first {min(warmup, len(requests))} requests ...")
        warm_flags = {**flags, "router.policy": "round_robin", "router.cost_model": str(costs_path)}
        await run_policy(cluster, warm_flags, requests[:warmup], prompts[:warmup], lambda: None)
    runs: dict[str, list[PolicyRun]] = {p: [] for p in E2E_POLICIES}
    order = [p for i in range(repeats) for p in E2E_POLICIES[:: 1 if i % 2 == 0 else -1]]
    with progress() as bar:
        for i, policy in enumerate(order):
            task = bar.add_task(f"{policy} {i + 1}/{len(order)}", total=len(requests))
            advance = functools.partial(bar.advance, task)
            policy_flags = {**flags, "router.policy": policy, "router.cost_model": str(costs_path)}
            runs[policy].append(await run_policy(cluster, policy_flags, requests, prompts, advance))
    return {p: pooled(rs) for p, rs in runs.items()}, fitted


def plot_ttft(
    ttft_ms: dict[str, list[float]], model_ttft_ms: dict[str, list[float]], path: Path, title: str
) -> None:
    """The TTFT CDF of each policy, measured (solid) and in the queueing model (dashed),
    p90 in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, policy in enumerate(ttft_ms):
        colour = f"C{i}"
        for label, values, style in (
            (policy, ttft_ms[policy], "-"),
            (f"{policy}, model", model_ttft_ms[policy], "--"),
        ):
            xs = np.sort(np.asarray(values))
            ys = np.arange(1, len(xs) + 1) / len(xs)
            p90 = float(np.percentile(xs, 90))
            ax.step(
                xs,
                ys,
                where="post",
                color=colour,
                linestyle=style,
                label=f"{label} (p90 {p90:,.0f} ms)",
            )
    ax.axhline(0.9, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("time to first token (ms)")
    ax.set_ylabel("share of requests")
    save_plot(fig, ax, title, path)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = parser(
        "The router: decision latency over a 1M-block prefix index (16 prefill, 4 decode"
        " instances), and end to end on a local cluster (TTFT and hit rates, cache-aware"
        " against round-robin). --quick times fewer decisions and replays fewer, smaller"
        " requests."
    )
    p.add_argument("--part", choices=("all", "decision", "e2e"), default="all")
    p.add_argument("--requests", type=int, metavar="N", help="decisions to time")
    p.add_argument("--index-blocks", type=int, metavar="N", help="blocks in the prefix index")
    _add_e2e_flags(p)
    args = p.parse_args(argv)
    if args.block_tokens is not None and args.block_tokens % PAGE_TOKENS:
        p.error(f"--block-tokens must be a multiple of {PAGE_TOKENS}")
    if args.trace is not None and not args.trace.is_file():
        p.error(f"--trace: no such file: {args.trace}")
    shown: dict[str, Any] = {"part": args.part, "quick": args.quick, "seed": args.seed}
    results: dict[str, float] = {}
    targets: dict[str, Target] = {}
    if args.part in ("all", "decision"):
        config = QUICK if args.quick else DecisionConfig()
        if args.requests:
            config = replace(config, num_requests=args.requests)
        if args.index_blocks:
            config = replace(config, index_blocks=args.index_blocks)
        results.update(decision_latency(config, args.seed))
        targets["decision_budget_headroom"] = Target(1.0)  # p99 <= DECISION_BUDGET_US
        shown.update(asdict(config), decision_budget_us=DECISION_BUDGET_US)
    e2e = None
    if args.part in ("all", "e2e"):
        e2e_config = _e2e_config(args)
        e2e = end_to_end(e2e_config, args.trace, args.seed)
        results.update(e2e.results)
        targets.update(E2E_TARGETS)
        shown.update({f"e2e_{k}": v for k, v in asdict(e2e_config).items()}, **e2e.shown)
    units = {k: _unit(k) for k in results}
    report("router", shown, results, units=units, targets=targets, json_path=args.json)
    if "decision_p99_us" in results:
        p99_us = results["decision_p99_us"]
        console.print(f"decision p99 {p99_us:.0f} us (budget {DECISION_BUDGET_US:.0f})")
    if e2e is not None:
        _after_e2e(e2e, args.plot or (args.json.with_suffix(".png") if args.json else None))
    return results


E2E_TARGETS: dict[str, Target] = {
    "ttft_p90_headroom": Target(1.0),  # TTFT p90 ratio <= TTFT_P90_GOAL
    "local_hit_rate_cache_aware": MoreThan(1.0, of="local_hit_rate_round_robin"),
    "hit_rate_cache_aware": Target(1.0, of="hit_rate_round_robin"),
}
BUSY_HOST_SHARE = 0.1  # other processes using more of the cores than this: a warning


def _after_e2e(e2e: EndToEnd, plot_path: Path | None) -> None:
    """Compare the TTFT ratio with the model's; warn if the host was busy meanwhile;
    draw the TTFT CDFs."""
    r = e2e.results
    console.print(
        f"TTFT p90 cache_aware / round_robin: measured {r['ttft_p90_ratio']:.2f}, queueing"
        f" model {r['model_ttft_p90_ratio']:.2f} (at offered load {r['offered_load']:.2f};"
        f" goal <= {TTFT_P90_GOAL})"
    )
    busy = {p: e2e.results[f"others_cpu_share_{p}"] for p in E2E_POLICIES}
    if max(busy.values()) > BUSY_HOST_SHARE:
        shares = ", ".join(f"{p} {share:.0%}" for p, share in busy.items())
        console.print(
            f"[yellow]other processes used the cores during the runs ({shares}):"
            " the TTFT comparison is unreliable; run again on a quiet host"
        )
    if plot_path is not None:
        title = f"router TTFT: {e2e.shown['trace']}"
        plot_ttft(e2e.ttft_ms, e2e.model_ttft_ms, plot_path, title)
        console.print(f"wrote {plot_path}")


_E2E_FLAGS: dict[str, tuple[str, type, str]] = {  # flag: (EndToEndConfig field, type, help)
    "--e2e-requests": ("num_requests", int, "replay the trace's first N requests"),
    "--block-tokens": ("block_tokens", int, "tokens per trace hash id (multiple of 16)"),
    "--max-blocks": ("max_blocks", int, "hash ids kept per prompt"),
    "--max-output-tokens": ("max_output_tokens", int, "output tokens at most"),
    "--time-scale": ("time_scale", float, "arrival times x this"),
    "--store-share": ("store_share", float, "a node's DRAM tier / the working set"),
    "--lookup-timeout-s": ("lookup_timeout_s", float, "router.lookup_timeout_s"),
    "--repeats": ("repeats", int, "replays per policy (ABBA order, pooled)"),
    "--warmup-requests": ("warmup_requests", int, "unmeasured replay of the first N first"),
}


def _add_e2e_flags(p: argparse.ArgumentParser) -> None:
    full, quick = EndToEndConfig(), QUICK_E2E
    p.add_argument("--trace", type=Path, metavar="PATH", help=TRACE_HELP)
    for flag, (name, kind, text) in _E2E_FLAGS.items():
        defaults = f"{getattr(full, name)}; --quick {getattr(quick, name)}"
        p.add_argument(flag, type=kind, dest=name, metavar="X", help=f"{text} ({defaults})")
    p.add_argument("--tiny-model", action="store_true", help="the tiny built-in model")
    p.add_argument("--no-pin", action="store_true", help="leave the prefill workers unpinned")
    p.add_argument("--no-peer-fetch", action="store_true", help="store nodes never read peers")
    p.add_argument("--plot", type=Path, metavar="PATH", help="TTFT CDF PNG (default: --json .png)")


def _e2e_config(args: argparse.Namespace) -> EndToEndConfig:
    config = QUICK_E2E if args.quick else EndToEndConfig()
    given = {name: getattr(args, name) for name, _, _ in _E2E_FLAGS.values()}
    config = replace(config, **{k: v for k, v in given.items() if v is not None})
    return replace(
        config, tiny_model=args.tiny_model, pin=not args.no_pin, peer_fetch=not args.no_peer_fetch
    )


def _unit(key: str) -> str:
    if key == "index_bytes_per_block":
        return "bytes"
    for suffix, unit in (("_ms", "ms"), ("_us", "us"), ("_s", "s")):
        if key.endswith(suffix) or f"{suffix}_" in key:
            return unit
    return ""


if __name__ == "__main__":
    main()
