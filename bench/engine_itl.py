"""Decode inter-token latency while long prompts arrive, colocated against disaggregated
(the engine bench's ``itl_*`` figures; the method is in ``bench.engine``'s docstring)."""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from itertools import pairwise
from operator import le
from pathlib import Path

import numpy as np
import torch
import uvloop
from rich.progress import Progress

from bench.engine_config import EngineBenchConfig
from bench.procs import start_worker, wait_worker
from engine.launch import free_port
from engine.sampling import SamplingParams
from engine.service.client import DecodeClient


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def random_tokens(rng: np.random.Generator, vocab_size: int, n: int) -> list[int]:
    return [int(t) for t in rng.integers(3, vocab_size, n)]  # 0-2: unk, BOS, EOS


def start_workers(stack: ExitStack, folder: Path, config: EngineBenchConfig) -> dict[str, str]:
    """Both arrangements' workers, all up at once (an idle worker costs no CPU): the
    colocated one and the prefill worker on one core, the disaggregated decode worker on
    the other. Returns each arrangement's decode address."""
    cores = sorted(os.sched_getaffinity(0))
    first, second = {cores[0]}, {cores[1 % len(cores)]}
    flags: dict[str, object] = {
        "engine.model": folder,
        "engine.threads": 1,
        "engine.store": "none",
        "engine.prefix_caching": "false",
        "engine.kv_cache_bytes": config.kv_cache_bytes,
    }
    decode = {**flags, "decode.port": 0, "decode.data_port": 0}
    port = free_port()
    colocated = stack.enter_context(
        start_worker("decode", {**decode, "decode.prefill": "local"}, first)
    )
    prefill = stack.enter_context(start_worker("prefill", {**flags, "prefill.port": port}, first))
    remote = {**decode, "decode.prefill": f"127.0.0.1:{port}"}
    disaggregated = stack.enter_context(start_worker("decode", remote, second))
    wait_worker(prefill, first)
    return {
        "colocated": wait_worker(colocated, first),
        "disaggregated": wait_worker(disaggregated, second),
    }


async def long_prompt(client: DecodeClient, tokens: list[int]) -> float:
    """Send one long prompt (max_tokens 1); its seconds from request to answer."""
    start = time.perf_counter()
    async for chunk in client.generate(tokens, greedy(1)):
        if chunk.cached_tokens:
            raise RuntimeError(f"a long prompt found {chunk.cached_tokens} tokens cached")
    return time.perf_counter() - start


async def long_prompts(
    client: DecodeClient,
    config: EngineBenchConfig,
    rng: np.random.Generator,
    seconds: list[float],
    stop: asyncio.Event,
) -> None:
    """Long prompts back to back until ``stop`` is set (the last one is finished)."""
    while not stop.is_set():
        tokens = random_tokens(rng, config.model.vocab_size, config.itl_long_tokens)
        seconds.append(await long_prompt(client, tokens))


async def stream(
    client: DecodeClient, tokens: list[int], max_tokens: int, stamps: list[float]
) -> None:
    async for chunk in client.generate(tokens, greedy(max_tokens)):
        stamps.append(time.perf_counter())
        if chunk.finish_reason:
            raise RuntimeError(f"a decode stream ended early ({chunk.finish_reason})")


async def phase(
    client: DecodeClient, config: EngineBenchConfig, rng: np.random.Generator, *, load: bool
) -> tuple[list[float], list[float]]:
    """Fresh decode streams, with or without long prompts arriving; the gaps (ms) between
    their tokens ``itl_warmup_tokens`` .. + ``itl_tokens``, and each long prompt's seconds."""
    stamps: list[list[float]] = [[] for _ in range(config.itl_streams)]
    max_tokens = config.model.max_positions - config.itl_prompt_tokens - 1
    vocab, prompt_tokens = config.model.vocab_size, config.itl_prompt_tokens
    streams = [
        asyncio.create_task(stream(client, random_tokens(rng, vocab, prompt_tokens), max_tokens, s))
        for s in stamps
    ]
    seconds: list[float] = []
    stop = asyncio.Event()
    tasks = list(streams)
    try:
        await until(tasks, lambda: min(map(len, stamps)) >= config.itl_warmup_tokens)
        firsts = [len(s) for s in stamps]  # the measured gaps start here, per stream
        if load:
            tasks.append(asyncio.create_task(long_prompts(client, config, rng, seconds, stop)))
        wanted = [n + config.itl_tokens for n in firsts]
        await until(tasks, lambda: all(map(le, wanted, map(len, stamps))))
        stop.set()
        await cancel(streams)
        await asyncio.gather(*tasks[len(streams) :])  # the long prompt in flight
    finally:
        await cancel(tasks)
    gaps = [
        (b - a) * 1e3
        for s, n in zip(stamps, firsts, strict=True)
        for a, b in pairwise(s[n - 1 : n + config.itl_tokens])
    ]
    return gaps, seconds


async def until(tasks: Sequence[asyncio.Task[None]], done: Callable[[], bool]) -> None:
    """Wait for ``done()``; raise the error of any task that ends first."""
    while not done():
        if ended := [t for t in tasks if t.done()]:
            await ended[0]
            raise RuntimeError("a load task ended early")
        await asyncio.sleep(0.02)


async def cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def drive(
    addresses: dict[str, str], config: EngineBenchConfig, rng: np.random.Generator, bar: Progress
) -> dict[str, float]:
    """Per arrangement: a warm-up long prompt and an idle phase; then rounds of loaded
    phases, alternating arrangements so that drift hits both alike. Each loaded figure is
    the median over rounds of that round's percentile."""
    task = bar.add_task("decode latency under load", total=2 * (1 + config.itl_rounds))
    idle: dict[str, list[float]] = {}
    loaded: dict[str, list[list[float]]] = {name: [] for name in addresses}
    seconds: dict[str, list[float]] = {name: [] for name in addresses}
    clients = {name: DecodeClient(address) for name, address in addresses.items()}
    try:
        for name, client in clients.items():
            await long_prompt(
                client, random_tokens(rng, config.model.vocab_size, config.itl_long_tokens)
            )
            idle[name], _ = await phase(client, config, rng, load=False)
            bar.advance(task)
        for _ in range(config.itl_rounds):
            for name, client in clients.items():
                gaps, took = await phase(client, config, rng, load=True)
                loaded[name].append(gaps)
                seconds[name] += took
                bar.advance(task)
    finally:
        for client in clients.values():
            await client.close()
    results: dict[str, float] = {}
    for name in addresses:
        for q in (99, 50):  # the median round: a stall of the host hits one round, not all
            rounds = [float(np.percentile(gaps, q)) for gaps in loaded[name]]
            results[f"itl_p{q}_ms_{name}"] = statistics.median(rounds)
        results[f"itl_p99_ms_idle_{name}"] = float(np.percentile(idle[name], 99))
        results[f"itl_long_prompt_s_{name}"] = statistics.median(seconds[name])
        results[f"itl_long_prompts_{name}"] = float(len(seconds[name]))
    results["itl_ratio"] = results["itl_p99_ms_disaggregated"] / results["itl_p99_ms_colocated"]
    return results


def cpu_check(seconds: float) -> dict[str, float]:
    """How quiet and how separate this machine's cores are, from a one-thread matmul loop
    on the last core: ``cpu_jitter`` = p99 / p50 of one matmul's time, alone (1.0: a quiet
    machine; a VM's host taking the vCPU away shows here); ``core_isolation`` = its rate
    while the first core runs the same loop, over its rate alone (1.0: independent cores,
    0.5: two halves of one). The colocated/disaggregated comparison stands in for separate
    GPUs only as far as these are near 1."""
    cores = sorted(os.sched_getaffinity(0))

    def spin(cpu: int, times: list[float], stop: threading.Event) -> None:
        os.sched_setaffinity(0, {cpu})  # this thread only
        torch.set_num_threads(1)
        a, b = torch.randn(512, 512), torch.randn(512, 1408)
        while not stop.is_set():
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)

    def run_on(cpus: list[int]) -> list[float]:
        times: list[list[float]] = [[] for _ in cpus]
        stop = threading.Event()
        threads = [
            threading.Thread(target=spin, args=(cpu, t, stop))
            for cpu, t in zip(cpus, times, strict=True)
        ]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        return times[-1]

    alone = run_on(cores[-1:])
    both = run_on(cores[:2]) if len(cores) > 1 else alone
    return {
        "cpu_jitter": float(np.percentile(alone, 99) / np.percentile(alone, 50)),
        "core_isolation": len(both) / len(alone),
    }


def measure_itl(
    folder: Path, config: EngineBenchConfig, rng: np.random.Generator, bar: Progress
) -> dict[str, float]:
    machine = cpu_check(config.cpu_check_s)
    with ExitStack() as stack:  # stops every worker, whatever happens
        addresses = start_workers(stack, folder, config)
        return {**machine, **uvloop.run(drive(addresses, config, rng, bar))}
