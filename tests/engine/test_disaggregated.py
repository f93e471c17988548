"""Prefill and decode workers as separate processes (and a colocated one): the same
tokens as one process, the KV handed over through the transfer engine, bad input refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from engine import LLM, SamplingParams
from engine.launch import free_port
from engine.roles import WorkerRole
from engine.service.client import DecodeClient
from engine.service.errors import ErrorKind, Failure, failure_of
from kvstore._proto.strata.v1 import engine_pb2, engine_pb2_grpc
from tests.device import DEVICE, DTYPE
from tests.engine.checkpoints import LLAMA, write_checkpoint
from tests.engine.stores import TINY_BLOCK
from tests.engine.test_llm import GREEDY, PROMPTS, SAMPLED, SMALL
from tests.processes import EngineProcess, ServeProcess

CACHE = {
    "engine.kv_cache_bytes": "16MiB",
    "engine.device": DEVICE,
    **({"engine.dtype": DTYPE} if DTYPE else {}),
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    """A store, a prefill worker using it, a decode worker using the prefill worker, and
    a colocated worker (prefill and decode in one process)."""
    with (
        ServeProcess(
            **{"store.block_bytes": str(TINY_BLOCK), "tiers.dram.capacity_bytes": "32MiB"}
        ) as store,
        EngineProcess(
            "prefill",
            **CACHE,
            **{
                "engine.store": store.address,
                "engine.prefix_caching": "false",  # reuse comes from the store alone
                "prefill.port": str(free_port()),
            },
        ) as prefill,
        EngineProcess(
            "decode",
            **CACHE,
            **{
                "engine.store": store.address,  # where it saves its answers' KV
                "decode.port": str(free_port()),
                "decode.data_port": "0",
                "decode.prefill": prefill.address,
            },
        ) as decode,
        EngineProcess(
            "decode",
            **CACHE,
            **{
                "decode.prefill": "local",
                "decode.port": str(free_port()),
                "engine.store": "none",
            },
        ) as colocated,
    ):
        yield {"store": store, "prefill": prefill, "decode": decode, "colocated": colocated}


async def generate(
    address: str, prompt: list[int] | str, params: SamplingParams, **kwargs: Any
) -> tuple[list[int], str, str, int]:
    """(token ids, text, finish reason, cached prompt tokens) from a decode worker."""
    tokens: list[int] = []
    text, reason, cached = "", "", -1
    async with DecodeClient(address) as client:
        async for chunk in client.generate(prompt, params, **kwargs):
            if cached < 0:
                cached = chunk.cached_tokens
            tokens += chunk.token_ids
            text += chunk.text
            reason = chunk.finish_reason or reason
    return tokens, text, reason, cached


async def generate_all(
    address: str, prompts: list[list[int]], params: SamplingParams
) -> list[tuple[list[int], str, str, int]]:
    return list(await asyncio.gather(*(generate(address, p, params) for p in prompts)))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def in_process() -> dict[str, list[list[int]]]:
    with LLM(store=None, **SMALL) as llm:
        return {
            "greedy": [o.token_ids for o in llm.generate(PROMPTS, GREEDY)],
            "sampled": [o.token_ids for o in llm.generate(PROMPTS, SAMPLED)],
        }


@pytest.mark.parametrize("worker", ["decode", "colocated"])
def test_separate_processes_generate_what_one_process_does(
    cluster: dict[str, Any], in_process: dict[str, list[list[int]]], worker: str
) -> None:
    address = cluster[worker].address
    for name, params in (("greedy", GREEDY), ("sampled", SAMPLED)):
        for _ in range(2):  # the second time the prefix is cached
            outs = run(generate_all(address, PROMPTS, params))
            assert [o[0] for o in outs] == in_process[name]
            assert all(o[2] == "length" for o in outs)
    assert outs[0][3] == 192  # cached prompt tokens of the last round's first prompt


def test_the_prefill_worker_reuses_the_stores_blocks(cluster: dict[str, Any]) -> None:
    prompt = PROMPTS[1][:100] + [7] * 60
    for _ in range(2):
        run(generate(cluster["decode"].address, prompt, GREEDY))

    async def stats() -> tuple[dict[str, Any], dict[str, Any]]:
        async with DecodeClient(cluster["decode"].address) as client:
            decode = await client.stats()
        async with grpc.aio.insecure_channel(cluster["prefill"].address) as channel:
            stub = engine_pb2_grpc.PrefillServiceStub(channel)
            response = await stub.Stats(engine_pb2.EngineStatsRequest())
        return decode, json.loads(response.json)

    decode, prefill = run(stats())
    assert decode["prefill"]["failures"] == 0
    assert decode["kv_pages"]["free"] == decode["kv_pages"]["total"]
    assert decode["write_back"]["saving_blocks"] == 0
    assert prefill["prefill"]["cached_local_tokens"] == 0
    assert prefill["store"]["loaded_blocks"]["dram"] >= 9  # 144 tokens of the second run


def test_the_next_turn_reuses_the_answer_a_separate_decode_worker_saved(
    cluster: dict[str, Any],
) -> None:
    first = PROMPTS[0][:40]
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    answer, _, _, _ = run(generate(cluster["decode"].address, first, params))
    # the store holds the answer's blocks before its last token arrives
    following = first + answer + [10, 66, 67, 68]
    tokens, _, _, cached = run(generate(cluster["decode"].address, following, GREEDY))
    # every full block of prompt + answer whose KV was computed (all but the last token)
    assert cached == (len(first) + len(answer) - 1) // 16 * 16 == 96
    with LLM(store=None, prefix_caching=False, **SMALL) as llm:
        assert tokens == llm.generate([following], GREEDY)[0].token_ids


def test_text_prompts_and_bad_requests(cluster: dict[str, Any]) -> None:
    address = cluster["decode"].address
    tokens, text, reason, _ = run(generate(address, "hello worker", GREEDY))
    assert len(tokens) == 24 and reason == "length" and text
    cases = [
        ([], GREEDY, "prompt is empty"),
        ([1] * 2048, GREEDY, "context is 2048"),
        ([1, 400], GREEDY, "token id 400"),
    ]
    for prompt, params, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            run(generate(address, prompt, params))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert message in (err.value.details() or "")


def test_invalid_sampling_is_refused(cluster: dict[str, Any]) -> None:
    async def call() -> None:
        async with grpc.aio.insecure_channel(cluster["decode"].address) as channel:
            stub = engine_pb2_grpc.DecodeServiceStub(channel)
            request = engine_pb2.GenerateRequest(
                prompt_token_ids=[1, 2], sampling=engine_pb2.SamplingParams(top_p=0.0)
            )
            async for _ in stub.Generate(request):
                pass

    with pytest.raises(grpc.aio.AioRpcError) as err:
        run(call())
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "top_p" in (err.value.details() or "")


def test_a_stream_cancelled_midway_frees_its_pages(cluster: dict[str, Any]) -> None:
    address = cluster["decode"].address

    async def cancel_after_three() -> dict[str, Any]:
        async with DecodeClient(address) as client:
            seen = 0
            params = SamplingParams(max_tokens=2000, ignore_eos=True)
            stream = client.generate(PROMPTS[0], params)
            async for _ in stream:
                seen += 1
                if seen == 3:
                    break
            await stream.aclose()  # type: ignore[attr-defined]
            for _ in range(200):
                stats = await client.stats()
                if stats["decode"]["cancelled"] >= 1:
                    return stats
                await asyncio.sleep(0.02)
            return await client.stats()

    stats = run(cancel_after_three())
    assert stats["decode"]["cancelled"] >= 1
    assert stats["kv_pages"]["free"] == stats["kv_pages"]["total"]


def test_a_missing_or_mismatched_prefill_worker_is_an_error(cluster: dict[str, Any]) -> None:
    with EngineProcess(
        "decode",
        **CACHE,
        **{
            "engine.store": "none",
            "engine.page_tokens": "8",  # not the prefill worker's layout
            "decode.port": str(free_port()),
            "decode.data_port": "0",
            "decode.prefill": cluster["prefill"].address,
        },
    ) as odd:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            run(generate(odd.address, [1, 2, 3], GREEDY))
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "page layout differ" in (err.value.details() or "")
        failure = failure_of(err.value)  # the prefill side failed, as its detail says
        assert (failure.role, failure.kind) == (WorkerRole.PREFILL, ErrorKind.PREFILL_UNAVAILABLE)
        dead = f"127.0.0.1:{free_port()}"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            run(generate(odd.address, [1, 2, 3], GREEDY, prefill_address=dead))
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert dead in (err.value.details() or "")


def test_workers_serve_a_real_checkpoint_folder(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt", {**LLAMA, "max_position_embeddings": 512})
    model = {"engine.model": str(folder), **CACHE}
    with LLM(folder, store=None, **SMALL) as llm:
        expected = llm.generate([3, 4, 5, 6, 7], GREEDY)[0]
    with (
        EngineProcess(
            "prefill", **model, **{"engine.store": "none", "prefill.port": str(free_port())}
        ) as prefill,
        EngineProcess(
            "decode",
            **model,
            **{
                "engine.store": "none",
                "decode.port": str(free_port()),
                "decode.data_port": "0",
                "decode.prefill": prefill.address,
            },
        ) as decode,
    ):
        tokens, text, _, _ = run(generate(decode.address, "w3 w4 w5 w6 w7", GREEDY))
    assert tokens == expected.token_ids and text == expected.text


def test_a_full_decode_cache_refuses_new_requests_and_never_fails_running_ones(
    cluster: dict[str, Any],
) -> None:
    """Each request reserves pages for its prompt and max_tokens: a second one that does
    not fit waits ``page_wait_s``, then is refused as RESOURCE_EXHAUSTED, while the
    first runs to its last token."""
    with EngineProcess(
        "decode",
        **{
            "engine.kv_cache_bytes": str(64 * TINY_BLOCK),  # 64 pages: 1024 tokens
            "engine.store": "none",
            "decode.port": str(free_port()),
            "decode.data_port": "0",
            "decode.prefill": cluster["prefill"].address,
            "decode.page_wait_s": "0.3",
        },
    ) as small:
        params = SamplingParams(max_tokens=600, ignore_eos=True)  # 38 pages each

        async def both() -> tuple[list[int], Failure | None, dict[str, Any]]:
            async with DecodeClient(small.address) as client:
                first = client.generate(PROMPTS[0], params)
                tokens = list((await anext(first)).token_ids)
                failure = None
                try:
                    await generate(small.address, PROMPTS[1], params)
                except grpc.aio.AioRpcError as exc:
                    failure = failure_of(exc)
                async for chunk in first:
                    tokens += chunk.token_ids
                for _ in range(100):  # the worker frees the pages just after the last token
                    stats = await client.stats()
                    if stats["kv_pages"]["free"] == stats["kv_pages"]["total"]:
                        break
                    await asyncio.sleep(0.02)
                return tokens, failure, stats

        tokens, failure, stats = run(both())
    assert failure is not None and failure.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (failure.role, failure.kind) == (WorkerRole.DECODE, ErrorKind.NO_ROOM)
    assert "no room" in failure.message
    assert len(tokens) == 600
    assert stats["kv_pages"]["free"] == stats["kv_pages"]["total"]
