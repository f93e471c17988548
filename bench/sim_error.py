"""The simulator's measured error: the same trace slice through the real local cluster
(``bench.router --part e2e``) and through the simulator with the cost model that run
fitted on this machine (profile (a)).

Input: the JSON files ``bench.router --part e2e --json PATH`` wrote (one per offered
load; each holds the measured figures per policy, the fitted cost model and the set-up).
For each, the simulator replays the same requests (``bench.router.trace_requests`` with
the run's settings, so the slice, block size, output cap and arrival scaling match) on
the same configuration (``bench.router_model.local_spec``): two prefill instances each
with its own store node (DRAM only, the run's ``store_bytes_per_node``, prefix-aware LRU
as the real store), peer fetch on, one decode instance, the run's cost model, its fitted
transfer cost as the link between nodes, the workers' own batch sizes (prefill prompts
batched per pass as the prefill worker's scheduler does, the decode worker's
``max_batch``), every instance on one host of the run's ``host_cores`` cores
(processor sharing, ``engine.sim.host``: the replay's workers are processes of one
machine), with the side work the run measured on the idle cluster before replaying
(``bench.cluster_costs.side_work``: the CPU of the store nodes, Redis, the client and the
decode worker outside its steps, per CPU second of prefill and per CPU second of decode
steps; each prefill pass and decode step brings its share beside it). Local reuse is
free in the simulator because the fitted prefill cost already includes reading cached
blocks from the node (it was profiled through the store).

Each load is simulated twice: on the host's cores as described (``simulated``), and on
what processes outside the cluster left of them while each policy replayed
(``simulated_busy_host``: ``others_cpu_share``, measured, taken off the cores). The
first is the simulator's error for the cluster it describes; the second says how much
of that error the host's other load explains. Beside the profiled side share, each
entry keeps the share the replay itself showed (``replay_side_share``, per policy), to
say whether profiling saw the side work the replay did.

Output: per load and policy, TTFT p50 and p90, decode ITL p50 and p90 (every interval
between streamed tokens) and hit rate, measured and simulated, their errors (relative
for TTFT and ITL, absolute for the hit rate); where the run read the decode worker's
step counters, also its mean step (wall ms) and mean batch against the simulated decode
instance's, which says whether an ITL error is the step's cost or how often it runs.
Written to
``bench/reference/sim_error.json`` together with the requests and the cost model, so
``tests/engine/sim/test_error.py`` can replay it without the trace or the cluster.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.cluster import TimedRequest
from bench.cluster_costs import SideWork
from bench.router import QUICK_E2E, EndToEndConfig, trace_requests
from bench.router_model import KV_BYTES_PER_TOKEN, as_sim_requests, local_profile, local_spec
from engine.router.costs import CostModel
from engine.sim.runs import run_once
from engine.sim.simulator import SimResult
from kvstore.types import EvictionPolicyKind

REFERENCE = Path(__file__).parent / "reference" / "sim_error.json"
LOCAL_PROFILE = Path(__file__).parents[1] / "engine" / "sim" / "profiles" / "local-cpu.json"
POLICIES = ("cache_aware", "round_robin")
TTFT_GOAL = 0.15
HIT_RATE_GOAL = 0.02
FIGURES = ("ttft_p50_ms", "ttft_p90_ms", "itl_p50_ms", "itl_p90_ms", "hit_rate")
STEP_FIGURES = ("decode_step_ms", "decode_mean_batch")  # the decode worker's own steps
GROUPS = ("measured", "simulated", "errors", "simulated_busy_host", "errors_busy_host")


def simulate(entry: dict[str, Any], *, busy_host: bool = False) -> dict[str, float]:
    """The simulator's figures for one stored load (see ``entry_for``): on the host's
    cores as described, or (``busy_host``) on what processes outside the cluster left of
    them during each policy's replay (``others_cpu_share``)."""
    costs = CostModel.from_dict(entry["cost_model"])
    block_tokens = entry["block_tokens"]
    spec = local_spec(
        costs,
        block_tokens=block_tokens,
        capacity_blocks=entry["capacity_blocks"],
        eviction=EvictionPolicyKind.PREFIX_LRU,  # the store's default, as in the replay
        host_cores=entry["host_cores"],
        pin_prefills=entry.get("pinned", False),
        side=SideWork(**entry["side_share"]),
        chunk_tokens=entry["prefill_chunk_tokens"],
        max_batch_tokens=entry["prefill_max_batch_tokens"],
        decode_max_batch=entry["decode_max_batch"],
    )
    requests = as_sim_requests(
        [TimedRequest(t, tuple(ids), out) for t, ids, out in entry["requests"]], block_tokens
    )
    figures: dict[str, float] = {}
    for policy in POLICIES:
        busy_share = entry["others_cpu_share"][policy] if busy_host else 0.0
        policy_spec = replace(spec, policy=policy, host_busy_share=busy_share)
        run = run_once(policy_spec, local_profile(costs), requests, None)
        for name in FIGURES:
            figures[f"{name}_{policy}"] = run.figures[name]
        figures |= decode_step_figures(policy, run.result)
    return figures


def decode_step_figures(policy: str, result: SimResult) -> dict[str, float]:
    """The decode instance's simulated steps, as ``bench.router`` reads the decode worker's:
    mean wall milliseconds a step (stretched by the shared host) and mean batch."""
    steps = sum(n for n, _ in result.steps.values())
    if not steps:
        return {}
    fed = sum(f for _, f in result.steps.values())
    busy_s = sum(result.busy_s[name] for name in result.steps)
    return {
        f"decode_step_ms_{policy}": 1e3 * busy_s / steps,
        f"decode_mean_batch_{policy}": fed / steps,
    }


def entry_for(measured: Path, trace: Path | None, seed: int) -> dict[str, Any]:
    doc = json.loads(measured.read_text())
    config = doc["config"]
    e2e = {k.removeprefix("e2e_"): v for k, v in config.items() if k.startswith("e2e_")}
    settings = replace(QUICK_E2E, **{k: v for k, v in e2e.items() if hasattr(EndToEndConfig, k)})
    _, requests = trace_requests(trace, settings, seed)
    results = doc["results"]
    measured_figures = {
        f"{name}_{policy}": results[f"{name}_{policy}"]
        for policy in POLICIES
        for name in (*FIGURES, *STEP_FIGURES)
        if f"{name}_{policy}" in results  # step figures: measured since the decode step counters
    }
    return {
        "source": measured.name,
        "offered_load": results["offered_load"],
        "time_scale": settings.time_scale,
        "host_cores": config["host_cores"],
        "pinned": config["prefill_worker_cores"] != "not pinned",
        "side_share": {
            "prefill": config["host_prefill_side_share"],
            "decode": config["host_decode_side_share"],
        },
        "others_cpu_share": {p: results[f"others_cpu_share_{p}"] for p in POLICIES},
        "replay_side_share": {p: replay_side_share(results, p) for p in POLICIES},
        "prefill_chunk_tokens": config["prefill_chunk_tokens"],
        "prefill_max_batch_tokens": config["prefill_max_batch_tokens"],
        "decode_max_batch": config["decode_max_batch"],
        "block_tokens": settings.block_tokens,
        "store_bytes_per_node": config["store_bytes_per_node"],
        "capacity_blocks": config["store_bytes_per_node"]
        // (KV_BYTES_PER_TOKEN * settings.block_tokens),
        "cost_model": config["cost_model"],
        "requests": [[r.arrival_s, list(r.hash_ids), r.output_tokens] for r in requests],
        "measured": measured_figures,
    }


SIDE_ROLES = ("store", "redis", "bench")  # bench.cluster's roles: whole processes


def replay_side_share(results: dict[str, float], policy: str) -> float:
    """Side work during ``policy``'s replay: the store nodes', Redis's, the bench
    process's (the router and the load generator) and the decode worker's CPU outside its
    steps, over the prefill workers' CPU and the decode steps' together (what the
    profiled shares would give at the replay's mix of the two)."""
    steps = results[f"decode_steps_{policy}"] * results[f"decode_step_cpu_ms_{policy}"] / 1e3
    steps /= results[f"wall_s_{policy}"]  # cores, as the cpu_cores_* figures
    side = sum(results.get(f"cpu_cores_{role}_{policy}", 0.0) for role in SIDE_ROLES)
    side += max(0.0, results[f"cpu_cores_decode_{policy}"] - steps)
    return side / (results[f"cpu_cores_prefill_{policy}"] + steps)


def errors(measured: dict[str, float], simulated: dict[str, float]) -> dict[str, float]:
    out = {}
    for key, value in measured.items():
        if key.startswith("hit_rate"):
            out[f"{key}_abs_error"] = simulated[key] - value
        else:
            out[f"{key}_rel_error"] = simulated[key] / value - 1
    return out


def error_part(paths: list[Path], trace: Path | None, seed: int) -> dict[str, float]:
    if not paths:
        raise SystemExit("--part error needs --measured FILE... (bench.router --part e2e --json)")
    entries = []
    results: dict[str, float] = {}
    for path in paths:
        entry = entry_for(path, trace, seed)
        entry["simulated"] = simulate(entry)
        entry["errors"] = errors(entry["measured"], entry["simulated"])
        entry["simulated_busy_host"] = simulate(entry, busy_host=True)
        entry["errors_busy_host"] = errors(entry["measured"], entry["simulated_busy_host"])
        entries.append(entry)
        tag = f"{Path(entry['source']).stem}_load{entry['offered_load']:.2f}"
        for group in GROUPS:
            for key, value in entry[group].items():
                results[f"{group}_{key}_{tag}"] = value
    results |= error_spread(entries)
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(_dumps(entries))
    _write_profile(entries)
    return results


def _dumps(entries: list[dict[str, Any]]) -> str:
    """The reference file: indented, but each request on one line (a slice is hundreds)."""
    lines = ['{"entries": [']
    for i, entry in enumerate(entries):
        head = json.dumps({k: v for k, v in entry.items() if k != "requests"}, indent=1)
        requests = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in entry["requests"])
        comma = "," if i < len(entries) - 1 else ""
        lines.append(f'{head[:-2]},\n "requests": [\n  {requests}\n ]\n}}{comma}')
    lines.append("]}")
    return "\n".join(lines) + "\n"


def error_spread(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Runs at the same arrival scale (each its own replay and its own fitted cost model)
    taken together: per error, its median and its range over the runs, named
    ``error_{median,min,max}_<figure>_<policy>_x<time scale>``."""
    by_scale: dict[float, list[dict[str, Any]]] = {}
    for entry in entries:
        by_scale.setdefault(entry["time_scale"], []).append(entry)
    out: dict[str, float] = {}
    for scale, group in by_scale.items():
        for key in group[0]["errors"]:
            values = [e["errors"][key] for e in group if key in e["errors"]]
            name = f"{key.removesuffix('_rel_error').removesuffix('_abs_error')}_x{scale:g}"
            out[f"error_median_{name}"] = statistics.median(values)
            out[f"error_min_{name}"] = min(values)
            out[f"error_max_{name}"] = max(values)
    return out


def _write_profile(entries: list[dict[str, Any]]) -> None:
    """``engine/sim/profiles/local-cpu.json``: the first entry's fitted cost model, with
    what the entries say of its uncertainty."""
    costs = CostModel.from_dict(entries[0]["cost_model"])
    raw = {
        "name": "local-cpu",
        "model": "bench.models.ModelShape (random Llama: 4 layers, hidden 384, 1 KV head), float32",
        "hardware": "this project's 2-core CPU host, one core per prefill worker",
        "gpus_per_instance": 1,
        "kv_bytes_per_token": KV_BYTES_PER_TOKEN,
        "costs": {k: v for k, v in costs.to_dict().items() if not k.startswith("transfer_")},
        "fitted_transfer": {k: v for k, v in costs.to_dict().items() if k.startswith("transfer_")},
        "uncertainty": _uncertainty(entries),
        "uncertainty_factor": 1.0,
        "sources": [
            "engine/router/profiling.py (bench.cluster_costs.fit_costs) on this machine: "
            + entries[0]["source"],
            "the measured error against that run: bench/reference/sim_error.json",
        ],
    }
    LOCAL_PROFILE.write_text(json.dumps(raw, indent=2) + "\n")


def _uncertainty(entries: list[dict[str, Any]]) -> str:
    per_token = [e["cost_model"]["prefill_per_token_s"] * 1e3 for e in entries]
    busy = [share for e in entries for share in e["others_cpu_share"].values()]
    prefill_side = [e["side_share"]["prefill"] for e in entries]
    decode_side = [e["side_share"]["decode"] for e in entries]
    replay_side = [share for e in entries for share in e["replay_side_share"].values()]
    ttft = [v for e in entries for k, v in e["errors"].items() if k.startswith("ttft")]
    return (
        "fitted by the router's profiler at the start of each bench.router run on a shared"
        f" 2-core host: prefill {min(per_token):.3f}-{max(per_token):.3f} ms a token across"
        f" the runs; side work (store nodes, Redis, client, decode worker outside its steps)"
        f" {min(prefill_side):.2f}-{max(prefill_side):.2f} CPU seconds per second of prefill"
        f" and {min(decode_side):.2f}-{max(decode_side):.2f} per second of decode steps on"
        " the idle cluster (set host_prefill_side_share and host_decode_side_share with"
        " host_cores), and"
        f" {min(replay_side):.2f}-{max(replay_side):.2f} of both during the replays; other"
        f" processes used {min(busy):.0%}-{max(busy):.0%} of the cores; the simulated TTFT"
        " p50/p90 was"
        f" {min(ttft):+.0%} to {max(ttft):+.0%} off the measured"
        " (bench/reference/sim_error.json)"
    )
