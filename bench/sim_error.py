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
transfer cost as the link between nodes. Local reuse is free in the simulator because
the fitted prefill cost already includes reading cached blocks from the node (it was
profiled through the store).

Output: per load and policy, TTFT p50 and p90 and hit rate, measured and simulated,
their errors (relative for TTFT, absolute for the hit rate), written to
``bench/reference/sim_error.json`` together with the requests and the cost model, so
``tests/engine/sim/test_error.py`` can replay it without the trace or the cluster. The
measured decode ITL is not in ``bench.router``'s output, so it is not compared.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.cluster import TimedRequest
from bench.router import QUICK_E2E, EndToEndConfig, trace_requests
from bench.router_model import KV_BYTES_PER_TOKEN, as_sim_requests, local_profile, local_spec
from engine.router.costs import CostModel
from engine.sim.runs import run_once
from kvstore.types import EvictionPolicyKind

REFERENCE = Path(__file__).parent / "reference" / "sim_error.json"
LOCAL_PROFILE = Path(__file__).parents[1] / "engine" / "sim" / "profiles" / "local-cpu.json"
POLICIES = ("cache_aware", "round_robin")
TTFT_GOAL = 0.15
HIT_RATE_GOAL = 0.02


def simulate(entry: dict[str, Any]) -> dict[str, float]:
    """The simulator's figures for one stored load (see ``entry_for``)."""
    costs = CostModel.from_dict(entry["cost_model"])
    block_tokens = entry["block_tokens"]
    spec = local_spec(
        costs,
        block_tokens=block_tokens,
        capacity_blocks=entry["capacity_blocks"],
        eviction=EvictionPolicyKind.PREFIX_LRU,  # the store's default, as in the replay
    )
    requests = as_sim_requests(
        [TimedRequest(t, tuple(ids), out) for t, ids, out in entry["requests"]], block_tokens
    )
    figures: dict[str, float] = {}
    for policy in POLICIES:
        run = run_once(replace(spec, policy=policy), local_profile(costs), requests, None)
        figures[f"ttft_p50_ms_{policy}"] = run.figures["ttft_p50_ms"]
        figures[f"ttft_p90_ms_{policy}"] = run.figures["ttft_p90_ms"]
        figures[f"hit_rate_{policy}"] = run.figures["hit_rate"]
    return figures


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
        for name in ("ttft_p50_ms", "ttft_p90_ms", "hit_rate")
    }
    return {
        "source": measured.name,
        "offered_load": results["offered_load"],
        "block_tokens": settings.block_tokens,
        "store_bytes_per_node": config["store_bytes_per_node"],
        "capacity_blocks": config["store_bytes_per_node"]
        // (KV_BYTES_PER_TOKEN * settings.block_tokens),
        "cost_model": config["cost_model"],
        "requests": [[r.arrival_s, list(r.hash_ids), r.output_tokens] for r in requests],
        "measured": measured_figures,
    }


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
        entries.append(entry)
        tag = f"load{entry['offered_load']:.2f}"
        for group in ("measured", "simulated", "errors"):
            for key, value in entry[group].items():
                results[f"{group}_{key}_{tag}"] = value
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps({"entries": entries}, indent=1) + "\n")
    _write_profile(CostModel.from_dict(entries[0]["cost_model"]), entries[0]["source"])
    return results


def _write_profile(costs: CostModel, source: str) -> None:
    raw = {
        "name": "local-cpu",
        "model": "bench.models.ModelShape (random Llama: 4 layers, hidden 384, 1 KV head), float32",
        "hardware": "this project's 2-core CPU host, one core per prefill worker",
        "gpus_per_instance": 1,
        "kv_bytes_per_token": KV_BYTES_PER_TOKEN,
        "costs": {k: v for k, v in costs.to_dict().items() if not k.startswith("transfer_")},
        "fitted_transfer": {k: v for k, v in costs.to_dict().items() if k.startswith("transfer_")},
        "uncertainty": "fitted once by the router's profiler at the start of a bench.router run"
        " on a shared 2-core host: two fits the same day differed by 1.8x in prefill cost a"
        " token, and the replays that followed ran 6-15x slower than the fit predicts while"
        " other processes used 60-70% of the cores (bench/reference/sim_error.json)",
        "uncertainty_factor": 1.0,
        "sources": [
            f"engine/router/profiling.py (bench.cluster.fit_costs) on this machine: {source}",
            "the measured error against that run: bench/reference/sim_error.json",
        ],
    }
    LOCAL_PROFILE.write_text(json.dumps(raw, indent=2) + "\n")
