"""Fitting the router's cost model by profiling the workers at start-up.

Random prompts (unique, so nothing is cached) go through a decode worker with a chosen
prefill worker:

- prefill: time to first token for a few prompt lengths, and for a prompt whose first
  three quarters were just computed (so the prefill reuses them): samples of
  (uncached tokens, cached tokens, seconds), each the median of ``PREFILL_REPEATS``
  prompts, after two unmeasured ones (a fresh worker's first passes of a shape are
  slower; with one prompt a length, two fits on a quiet host differed 2x in the base);
- decode: batches of requests generating together (1 to 16, short and long prompts, as
  the decode worker's batch and cache allow), each sample read from the decode worker's
  own step counters (``DecodeStats``) over ``DECODE_STEPS`` steps once every request of
  the batch has its first token, after which the requests are cancelled: the batch it
  ran per step, its context tokens and its seconds per step. Requests sent together do
  not start decoding together (each waits for its own prefill, one after another on the
  prefill worker), so a window from the first request on would put a ramp of small
  batches under the label of a big one, and a batch of long prompts would never decode
  together at all: 16 requests of 1,024 tokens averaged about 2 sequences a step. The
  samples cover the batches and contexts a loaded decode worker runs;
- transfer: with prefill workers on two different store nodes, the time to first token
  of a prompt cached on the other node only, less its predicted prefill: samples of
  (tokens, seconds). With one node, an assumed 1 GB/s link (``ASSUMED_LINK_BPS``).

Prefill costs include the gRPC and hand-off overheads the router will see, which is the
point; a decode step's, by the worker's clock, include handing each token to its stream.
Profiling requests run in the prefill workers' profiling namespace (the model id with
``#profiling``): the store counts them apart, they never enter a user's namespace or a
worker's prefix cache, and ``end_profiling`` has their blocks removed when profiling ends.
A fitted model is saved with ``CostModel.save`` and loaded with ``router.cost_model``.

Prompt lengths are sized to fit the workers' KV caches (the longest prompt is at most
half of the smallest cache, so the decode batches fit too); a cache too small to profile
at all, or a worker refusing a profiling request, is a ``ProfilingError`` naming the
setting to change, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import statistics
import time
from collections.abc import Callable

import grpc

from engine.errors import EngineError
from engine.router.costs import CostModel
from engine.router.workers import Worker, WorkerPool
from engine.sampling import SamplingParams
from engine.service.codec import params_to_pb
from kvstore._proto.strata.v1 import engine_pb2, engine_pb2_grpc
from kvstore.access import bearer_metadata

logger = logging.getLogger(__name__)
ASSUMED_LINK_BPS = 1e9
PREFILL_REPEATS = 3  # prompts of each length; their median is the sample


MIN_PROFILE_TOKENS = 64


class ProfilingError(EngineError, RuntimeError):
    """Profiling could not run; the message says which setting to change."""


def profile_lengths(max_context: int, cache_tokens: int, page_tokens: int) -> int:
    """The longest profiling prompt: up to half the context (at most 1024), and at most
    half of the smallest worker KV cache less a page per request of a decode batch."""
    fit = cache_tokens // 2 - 4 * page_tokens
    if fit < MIN_PROFILE_TOKENS:
        raise ProfilingError(
            f"the smallest worker KV cache holds {cache_tokens} tokens; profiling the cost"
            f" model needs about {2 * (MIN_PROFILE_TOKENS + 4 * page_tokens)}: raise"
            " engine.kv_cache_bytes, or set router.cost_model to a fitted model"
        )
    return min(max(MIN_PROFILE_TOKENS, min(1024, max_context // 2)), fit)


async def profile_costs(
    pool: WorkerPool,
    *,
    vocab_size: int,
    max_context: int,
    kv_bytes_per_token: int,
    token: str = "",
    seed: int = 0,
) -> CostModel:
    """Raises ``ProfilingError`` (naming the setting) when the workers cannot be profiled."""
    try:
        return await _profile(
            pool,
            vocab_size=vocab_size,
            max_context=max_context,
            kv_bytes_per_token=kv_bytes_per_token,
            token=token,
            seed=seed,
        )
    except grpc.aio.AioRpcError as exc:
        raise ProfilingError(
            f"a worker refused a profiling request ({exc.code().name}: {exc.details()});"
            " raise engine.kv_cache_bytes, or set router.cost_model to a fitted model"
        ) from None
    finally:
        await end_profiling(pool, token)


async def end_profiling(pool: WorkerPool, token: str = "") -> int:
    """Tell every prefill worker profiling is over, so that it removes profiling's blocks
    from the store; how many were removed (a worker that cannot be told is logged)."""
    metadata = bearer_metadata(token)
    removed = 0
    for worker in pool.prefill.values():
        stub = engine_pb2_grpc.PrefillServiceStub(worker.channel)
        try:
            reply = await stub.EndProfiling(
                engine_pb2.EndProfilingRequest(), metadata=metadata, timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            logger.warning(
                "prefill worker %s kept its profiling blocks (%s)", worker.id, exc.code().name
            )
            continue
        removed += reply.removed_blocks
    logger.info("profiling over: %d blocks removed from the store", removed)
    return removed


async def _profile(
    pool: WorkerPool,
    *,
    vocab_size: int,
    max_context: int,
    kv_bytes_per_token: int,
    token: str,
    seed: int,
) -> CostModel:
    metadata = bearer_metadata(token)
    rng = random.Random(seed)
    decode = next(iter(pool.decode.values()))
    prefills = list(pool.prefill.values())
    first = prefills[0]

    def prompt(n: int) -> list[int]:
        return [rng.randrange(vocab_size) for _ in range(n)]

    infos = [w.info for w in pool.workers]
    page_tokens = max(1, infos[0].page_tokens)
    cache_tokens = min(i.kv_pages_total for i in infos) * page_tokens
    longest = profile_lengths(max_context, cache_tokens, page_tokens)
    sizes = sorted({16, longest // 8, longest // 2, longest})
    for n in (longest, 16):  # unmeasured: a fresh worker's first passes of a shape are slower
        await _ttft(decode, first, prompt(n), metadata)
    prefill_samples = []
    for n in sizes:
        runs = [await _ttft(decode, first, prompt(n), metadata) for _ in range(PREFILL_REPEATS)]
        cached = min(c for _, c in runs)
        prefill_samples.append((n - cached, cached, statistics.median(s for s, _ in runs)))
    tail = longest // 4
    runs = []
    for _ in range(PREFILL_REPEATS):
        shared = prompt(longest)
        await _ttft(decode, first, shared, metadata)
        runs.append(await _ttft(decode, first, shared[:-tail] + prompt(tail), metadata))
    cached = min(c for _, c in runs)
    prefill_samples.append((longest - cached, cached, statistics.median(s for s, _ in runs)))

    decode_samples = []
    for batch, length in decode_shapes(longest, cache_tokens, max(1, decode.info.max_batch)):
        prompts = [prompt(length) for _ in range(batch)]
        max_tokens = min(cache_tokens // 2 // batch, max_context) - length
        decode_samples.append(await decode_sample(decode, first, prompts, metadata, max_tokens))

    transfer_samples = _assumed_transfer(kv_bytes_per_token)
    prefill_only = CostModel.fit(prefill_samples, transfer_samples, decode_samples)
    other = next(
        (p for p in prefills[1:] if p.info.store_node_id != first.info.store_node_id), None
    )
    if other is not None:
        transfer_samples = []
        for n in (longest // 2, longest):
            cached_prompt = prompt(n)
            await _ttft(decode, first, cached_prompt, metadata)
            seconds, cached = await _ttft(decode, other, cached_prompt, metadata)
            moved = cached  # reused on `other` only by pulling from `first`'s node
            transfer_samples.append(
                (moved, max(0.0, seconds - prefill_only.prefill_s(n - moved, moved)))
            )
    return CostModel.fit(prefill_samples, transfer_samples, decode_samples)


def _assumed_transfer(bytes_per_token: int) -> list[tuple[int, float]]:
    return [(n, 0.001 + n * bytes_per_token / ASSUMED_LINK_BPS) for n in (16, 256, 4096)]


async def _ttft(
    decode: Worker, prefill: Worker, tokens: list[int], metadata: tuple[tuple[str, str], ...]
) -> tuple[float, int]:
    """Seconds to the first token of ``tokens`` and how many prompt tokens were reused."""
    stub = engine_pb2_grpc.DecodeServiceStub(decode.channel)
    request = engine_pb2.GenerateRequest(
        prompt_token_ids=tokens,
        sampling=params_to_pb(SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)),
        prefill_address=prefill.address,
        profiling=True,
    )
    start = time.perf_counter()
    async for chunk in stub.Generate(request, metadata=metadata):
        return time.perf_counter() - start, chunk.cached_tokens
    raise RuntimeError(f"decode worker {decode.id} sent nothing")


DECODE_STEPS = 32  # steps a decode sample times, with every request of it decoding


def decode_shapes(longest: int, cache_tokens: int, max_batch: int) -> list[tuple[int, int]]:
    """(requests, prompt tokens) of the decode samples: batches of 1 to 16 within the
    decode worker's ``max_batch``, short and long contexts, each batch's prompts and
    their tokens within half the smallest cache."""
    shapes = [
        (1, 32),
        (2, longest // 2),
        (4, longest // 8),
        (8, 32),
        (16, 32),
        (4, longest),
        (8, longest // 2),
        (16, longest),
    ]
    return [
        (batch, length)
        for batch, length in shapes
        if batch <= max_batch and batch * (length + 2 * DECODE_STEPS) <= cache_tokens // 2
    ]


async def decode_sample(
    decode: Worker,
    prefill: Worker,
    prompts: list[list[int]],
    metadata: tuple[tuple[str, str], ...],
    max_tokens: int,
) -> tuple[float, float, float]:
    """``prompts`` generating together: the decode worker's mean batch per step, mean
    context tokens per step and mean seconds per step, by its own counters, from the
    moment every request has its first token until each has ``DECODE_STEPS`` more (or
    has ended: at ``max_tokens``, up to which each may generate while the others wait for
    their prefills); then the requests still running are cancelled."""
    stub = engine_pb2_grpc.DecodeServiceStub(decode.channel)
    params = params_to_pb(
        SamplingParams(temperature=0, max_tokens=max(max_tokens, 1), ignore_eos=True)
    )
    tokens = [0] * len(prompts)  # streamed so far, per request
    ended = [False] * len(prompts)
    progress = asyncio.Event()  # a token or an end since the last look

    async def one(i: int, prompt: list[int]) -> None:
        request = engine_pb2.GenerateRequest(
            prompt_token_ids=prompt,
            sampling=params,
            prefill_address=prefill.address,
            profiling=True,
        )
        try:
            async for _ in stub.Generate(request, metadata=metadata):
                tokens[i] += 1
                progress.set()
        finally:
            ended[i] = True
            progress.set()

    async def until(done: Callable[[int], bool]) -> None:
        while True:
            for task in tasks:  # a failed request fails the sample
                failure = task.exception() if task.done() and not task.cancelled() else None
                if failure is not None:
                    raise failure
            if all(ended[i] or done(i) for i in range(len(prompts))):
                return
            progress.clear()
            await progress.wait()

    tasks = [asyncio.create_task(one(i, p)) for i, p in enumerate(prompts)]
    try:
        await until(lambda i: tokens[i] > 0)
        before = await _step_counters(stub, metadata)
        start = list(tokens)
        await until(lambda i: tokens[i] - start[i] >= DECODE_STEPS)
        after = await _step_counters(stub, metadata)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    steps = after["steps"] - before["steps"]
    if steps <= 0:
        raise ProfilingError(f"decode worker {decode.id} counted no steps while profiling")

    def mean(name: str) -> float:
        return (after[name] - before[name]) / steps

    return mean("batched_tokens"), mean("batched_context_tokens"), mean("step_s")


async def _step_counters(
    stub: engine_pb2_grpc.DecodeServiceStub, metadata: tuple[tuple[str, str], ...]
) -> dict[str, float]:
    reply = await stub.Stats(engine_pb2.EngineStatsRequest(), metadata=metadata)
    decode: dict[str, float] = json.loads(reply.json)["decode"]
    return decode
