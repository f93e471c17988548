"""The engine on this CPU: time to first token with a cached prefix, decode throughput,
and decode latency while long prompts arrive (colocated against disaggregated).

Model: a random Llama checkpoint (``engine.model.synthetic``, float32) written to a
temporary folder, sized so that a 4k-token prefill takes over a second here
(``prefill_s_<len>`` reports it). Every figure is a median unless it says p99.

* ``ttft_ms_<len>_<cached%>``: time to first token of a ``len``-token prompt whose first
  ``cached%`` (rounded down to whole 16-token blocks) is cached *in the store* (an
  embedded node; the worker's own prefix cache is off). Per measurement: a fresh random
  prompt; a "seed" prompt of the same first X tokens then one diverging block is
  prefilled first, and its write-back to the store awaited (no page held by anything);
  then the prompt is timed from ``PrefillWorker.submit`` to its ``PrefillResult``
  (queue, store lookup, layer-wise load overlapped with compute, compute of the rest and
  its own layer-wise write-back, first-token sampling). The result's
  ``cached_store_tokens`` must equal X, else the run fails. ``compute_ms_<len>_<cached%>``
  is its part from admission on (the forward passes with their layer-wise loads and
  write-back; the queue and the store lookup left out). ``ttft_speedup_<len>_<p>``
  = ttft at 0% / ttft at p% (compute alone would give 1 / (1 - p)).
* ``decode_tok_s_b<B>``: B prompts are prefilled, then handed to the decode worker at
  once (``DecodeWorker.admit``); decode tokens/s = B / the median interval between one
  request's consecutive tokens (one batched decode step each; prefill excluded). The run
  fails unless the worker's mean batch was close to B.
* ``itl_p99_ms_<arrangement>``: ``itl_streams`` decode streams (short prompts,
  ``ignore_eos``) through ``DecodeClient.generate`` while 4k-token prompts (max_tokens 1)
  arrive back to back; ITL = the gap between consecutive chunk arrivals of a stream, p99
  over the gaps of each stream's tokens ``itl_warmup_tokens`` .. + ``itl_tokens`` (the
  long prompts start when every stream has its warm-up tokens), median over
  ``itl_rounds`` rounds, arrangements alternating (a VM's host may stall a vCPU for a
  second or so: enough to own one round's p99, not the median). A token range, not a time
  window: a decode step here costs more as the context grows, so both arrangements are
  measured at the same context lengths. ``itl_p99_ms_idle_*``: the same with no long
  prompts; ``itl_long_prompt_s_*``: seconds per long prompt under that load.
  Colocated: one ``kvengine decode --decode.prefill local`` pinned to one core.
  Disaggregated: ``kvengine prefill`` pinned to one core and ``kvengine decode`` to the
  other (standing in for separate GPUs). Both with ``--engine.threads 1``, no store
  (``--engine.store none``), no prefix cache. ``itl_ratio`` = disaggregated /
  colocated. The bench process is not pinned: it shares the cores with the workers, but
  only sends prompts and reads chunks.
* ``cpu_jitter``, ``core_isolation``: how quiet and how separate the cores are, measured
  just before the ITL runs (see ``cpu_check``). On a VM whose vCPUs share physical cores
  or get descheduled by the host, ITL percentiles carry that noise, and disaggregating
  onto two vCPUs cannot remove all the interference.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from bench.common import Target, parser, progress, report
from bench.engine_config import QUICK, EngineBenchConfig
from bench.engine_itl import greedy, measure_itl, random_tokens
from engine.llm import LLM
from engine.workers.requests import FinishReason, TokenEvent


@dataclass(frozen=True, slots=True)
class AtMost(Target):
    """A figure's goal: ``key <= ratio`` (lower is better)."""

    def met(self, results: dict[str, float], key: str) -> bool:
        return results[key] <= self.ratio

    def describe(self) -> str:
        return f"<= {self.ratio:g}"


def label(num_tokens: int) -> str:
    return f"{num_tokens // 1024}k" if num_tokens % 1024 == 0 else str(num_tokens)


# -- time to first token --------------------------------------------------------------


def wait_idle(llm: LLM, held_pages: int = 0, timeout_s: float = 60.0) -> None:
    """Wait until only ``held_pages`` pages are taken: every write-back to the store has
    committed (a write-back holds its pages until then)."""
    deadline = time.monotonic() + timeout_s
    while llm.cache.num_pages - llm.cache.num_free > held_pages:
        if time.monotonic() > deadline:
            raise RuntimeError("the store write-back did not finish")
        time.sleep(0.002)


def ttft_once(llm: LLM, rng: np.random.Generator, length: int, percent: int) -> tuple[float, float]:
    """One prompt with ``percent`` of it in the store: (TTFT s, prefill compute s)."""
    page = llm.cache.page_tokens
    vocab = llm.loaded.config.vocab_size
    cached = length * percent // 100 // page * page
    prompt = random_tokens(rng, vocab, length)
    params = greedy(1)
    if cached:
        seed = prompt[:cached] + random_tokens(rng, vocab, page)
        seed[cached] = 3 + (prompt[cached] - 3 + 1) % (vocab - 3)  # differs at token X
        llm.cache.release(llm.prefill_worker.submit(seed, params).result().pages)
    wait_idle(llm)
    start = time.perf_counter()
    result = llm.prefill_worker.submit(prompt, params).result()
    elapsed = time.perf_counter() - start
    llm.cache.release(result.pages)
    if result.cached_store_tokens != cached or result.cached_local_tokens:
        raise RuntimeError(
            f"{length}-token prompt: {result.cached_store_tokens} tokens came from the store"
            f" and {result.cached_local_tokens} from the worker's cache; expected {cached}"
            " from the store"
        )
    return elapsed, result.compute_s


def measure_ttft(
    llm: LLM, rng: np.random.Generator, config: EngineBenchConfig, bar: Progress
) -> dict[str, float]:
    cells = [(n, p) for n in config.prompt_lengths for p in config.cached_percents]
    task = bar.add_task("time to first token", total=config.ttft_repeats * len(cells))
    longest = max(config.prompt_lengths)
    ttft_once(llm, rng, longest, max(config.cached_percents))  # warm-up: untimed
    samples: dict[tuple[int, int], list[tuple[float, float]]] = {c: [] for c in cells}
    for _ in range(config.ttft_repeats):  # rounds outermost: drift hits every cell alike
        for cell in cells:
            samples[cell].append(ttft_once(llm, rng, *cell))
            bar.advance(task)
    results = {
        f"ttft_ms_{n}_{p}": statistics.median(s for s, _ in got) * 1e3
        for (n, p), got in samples.items()
    }
    for (n, p), got in samples.items():  # the prefill's compute of the uncached tokens
        results[f"compute_ms_{n}_{p}"] = statistics.median(c for _, c in got) * 1e3
    for n in config.prompt_lengths:  # the prefill's compute alone, nothing cached
        results[f"prefill_s_{n}"] = statistics.median(c for _, c in samples[n, 0])
    top = max(config.cached_percents)
    results[f"ttft_speedup_{label(longest)}_{top}"] = (
        results[f"ttft_ms_{longest}_0"] / results[f"ttft_ms_{longest}_{top}"]
    )
    return results


# -- decode throughput ----------------------------------------------------------------


def decode_tok_s(
    llm: LLM, rng: np.random.Generator, batch: int, config: EngineBenchConfig
) -> float:
    """Tokens/s of ``batch`` requests decoding together (see the module docstring)."""
    params = greedy(config.decode_max_tokens)
    vocab = llm.loaded.config.vocab_size
    prompts = [random_tokens(rng, vocab, config.decode_prompt_tokens) for _ in range(batch)]
    prefilled = [f.result() for f in [llm.prefill_worker.submit(p, params) for p in prompts]]
    wait_idle(llm, held_pages=sum(len(r.pages) for r in prefilled))
    requests = [llm.engine.new_request(p, params) for p in prompts]
    lead, stamps, ends = requests[0].request_id, [], []
    done = threading.Event()

    def emit(event: TokenEvent) -> None:  # on the decode worker's thread
        if event.request_id == lead:
            stamps.append(time.perf_counter())
        if event.finish_reason is not None:
            ends.append(event)
            if len(ends) == batch:
                done.set()

    stats = llm.decode_worker.stats
    steps, batched = stats.steps, stats.batched_tokens
    for request, result in zip(requests, prefilled, strict=True):
        llm.decode_worker.admit(request, result.pages, result.first_token, emit)
    if not done.wait(timeout=600):
        raise RuntimeError(f"decode of batch {batch} did not finish")
    failed = [e.error for e in ends if e.finish_reason is not FinishReason.LENGTH]
    mean_batch = (stats.batched_tokens - batched) / max(1, stats.steps - steps)
    if failed or mean_batch < 0.9 * batch:
        raise RuntimeError(f"batch {batch}: mean batch {mean_batch:.1f}, errors {failed}")
    return batch / statistics.median(np.diff(stamps))


# -- the run --------------------------------------------------------------------------


def run(config: EngineBenchConfig, folder: Path, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    results: dict[str, float] = {}
    with progress() as bar:
        with LLM(
            folder,
            store="embedded",
            store_bytes=config.store_bytes,
            kv_cache_bytes=config.kv_cache_bytes,
            prefix_caching=False,
        ) as llm:
            results.update(measure_ttft(llm, rng, config, bar))
            task = bar.add_task("decode throughput", total=len(config.decode_batches))
            for batch in config.decode_batches:
                results[f"decode_tok_s_b{batch}"] = decode_tok_s(llm, rng, batch, config)
                bar.advance(task)
        results.update(measure_itl(folder, config, rng, bar))
    return results


def plot(results: dict[str, float], config: EngineBenchConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for n in config.prompt_lengths:
        pcts = list(config.cached_percents)
        left.plot(
            pcts, [results[f"ttft_ms_{n}_{p}"] for p in pcts], "o-", label=f"{label(n)} prompt"
        )
    left.set_xlabel("prompt cached in the store (%)")
    left.set_ylabel("time to first token (ms)")
    left.set_yscale("log")
    left.set_title("TTFT vs cached prefix")
    left.legend()
    names = ["colocated", "disaggregated"]
    x = np.arange(len(names))
    right.bar(x - 0.2, [results[f"itl_p50_ms_{k}"] for k in names], 0.4, label="p50")
    right.bar(x + 0.2, [results[f"itl_p99_ms_{k}"] for k in names], 0.4, label="p99")
    right.set_xticks(x, names)
    right.set_ylabel("decode inter-token latency (ms)")
    right.set_title("decode ITL while 4k prompts arrive")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


TARGETS: dict[str, Target] = {"ttft_speedup_4k_90": Target(4.0), "itl_ratio": AtMost(0.5)}


def units(key: str) -> str:
    if "_ms" in key:
        return "ms"
    if key.startswith("decode_tok_s"):
        return "tok/s"
    if key.startswith("itl_long_prompts"):
        return ""
    return "s" if "_s_" in key or key.endswith("_s") else "x"


def main(argv: list[str] | None = None, config: EngineBenchConfig | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --json)")
    args = p.parse_args(argv)
    config = config or (QUICK if args.quick else EngineBenchConfig())
    with tempfile.TemporaryDirectory(prefix="strata-bench-model-") as tmp:
        folder = config.model.write(Path(tmp) / "random-llama", args.seed)
        results = run(config, folder, args.seed)
    targets = {k: t for k, t in TARGETS.items() if k in results}
    shown = {
        **asdict(replace(config)),
        "quick": args.quick,
        "seed": args.seed,
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "cores": len(os.sched_getaffinity(0)),
        "bench_process": "unpinned: shares the cores with the workers (it only reads chunks)",
    }
    shown = {k: list(v) if isinstance(v, tuple) else v for k, v in shown.items()}
    report(
        "engine",
        shown,
        results,
        units={k: units(k) for k in results},
        targets=targets,
        json_path=args.json,
    )
    path = args.plot or (args.json.with_suffix(".png") if args.json else None)
    if path is not None:
        plot(results, config, path)


if __name__ == "__main__":
    main()
