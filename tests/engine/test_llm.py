"""``engine.LLM`` end to end: outputs, exact reuse from every source, stops, bad input."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from engine import LLM, InvalidRequest, InvalidSampling, SamplingParams
from engine.launch import free_port
from engine.model.loader import load_model
from tests.device import DEVICE, DTYPE
from tests.engine.checkpoints import LLAMA, greedy, write_checkpoint
from tests.engine.stores import NodeThread
from tests.redis_server import RedisServer

MiB = 1 << 20
SMALL: dict[str, Any] = {
    "kv_cache_bytes": 16 * MiB,
    "store_bytes": 32 * MiB,
    "device": DEVICE,
    **({"dtype": DTYPE} if DTYPE else {}),
}
GREEDY = SamplingParams(temperature=0, max_tokens=24)
SAMPLED = SamplingParams(temperature=1.0, top_p=0.95, top_k=100, seed=11, max_tokens=24)


def prompt(length: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(256) for _ in range(length)]


# a system prompt shared by three conversations, one of them short of a block
SHARED = prompt(160, seed=1)
PROMPTS = [SHARED + prompt(37, seed=2), SHARED + prompt(70, seed=3), SHARED[:150]]


@pytest.fixture(scope="module")
def reference() -> dict[str, list[list[int]]]:
    """Every prompt computed from scratch: no store, no prefix cache."""
    with LLM(store=None, prefix_caching=False, **SMALL) as llm:
        return {
            name: [o.token_ids for o in llm.generate(PROMPTS, params)]
            for name, params in (("greedy", GREEDY), ("sampled", SAMPLED))
        }


@pytest.fixture
def llm() -> Iterator[LLM]:
    with LLM(**SMALL) as engine:
        yield engine


def run_twice(llm: LLM) -> tuple[dict[str, list[list[int]]], list[float]]:
    """Generate every prompt once to fill the caches, then again: the second outputs and
    how many prompt tokens each second run reused."""
    for params in (GREEDY, SAMPLED):
        llm.generate(PROMPTS, params)
    second, cached = {}, []
    for name, params in (("greedy", GREEDY), ("sampled", SAMPLED)):
        outs = llm.generate(PROMPTS, params)
        second[name] = [o.token_ids for o in outs]
        cached = [o.metrics["cached_tokens"] for o in outs]
    return second, cached


# -- outputs ---------------------------------------------------------------------------


def test_generate_takes_strings_and_token_lists(llm: LLM) -> None:
    outs = llm.generate(["Hello there, engine.", [72, 105, 33]], GREEDY)
    assert [o.prompt for o in outs] == ["Hello there, engine.", None]
    assert outs[0].prompt_token_ids == list(b"Hello there, engine.")
    assert outs[1].prompt_token_ids == [72, 105, 33]
    for out in outs:
        assert len(out.token_ids) == 24 and out.finish_reason == "length"
        assert out.text == llm.tokenizer.decode(out.token_ids)
    single = llm.generate([72, 105, 33], GREEDY)  # one prompt as a list of ids
    assert len(single) == 1 and single[0].token_ids == outs[1].token_ids


def test_the_workers_generate_what_plain_greedy_decoding_does(llm: LLM) -> None:
    for tokens in PROMPTS:
        expected = greedy(llm.loaded.model, tokens, 24)
        assert llm.generate(tokens, GREEDY)[0].token_ids == expected


def test_a_batch_equals_its_prompts_one_by_one(llm: LLM) -> None:
    prompts = [prompt(n, seed=n) for n in (5, 17, 64, 100, 3)]
    together = [o.token_ids for o in llm.generate(prompts, SAMPLED)]
    with LLM(store=None, **SMALL) as alone:
        assert together == [alone.generate(p, SAMPLED)[0].token_ids for p in prompts]
    assert llm.stats()["decode"]["max_batch"] > 1


def test_a_short_prompt_does_not_wait_for_a_long_one_prefilled_beside_it() -> None:
    """Its first token goes out when its own last chunk has run, whether it was batched
    with the long prompt or joined between the long prompt's forward passes."""
    with LLM(store=None, prefix_caching=False, chunk_tokens=64, **SMALL) as llm:
        order: list[str] = []
        worker = llm.prefill_worker
        long = worker.submit(prompt(1024, seed=8), GREEDY)  # 16 chunks
        short = worker.submit(prompt(20, seed=9), GREEDY)
        long.add_done_callback(lambda _: order.append("long"))
        short.add_done_callback(lambda _: order.append("short"))
        results = [long.result(timeout=60), short.result(timeout=60)]
        for result in results:
            llm.cache.release(result.pages)
        assert order == ["short", "long"]
        assert results[1].compute_s < results[0].compute_s


def test_a_real_checkpoint_folder(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt", {**LLAMA, "max_position_embeddings": 512})
    with LLM(folder, **SMALL) as llm:
        out = llm.generate("w3 w4 w5 w6", SamplingParams(temperature=0, max_tokens=12))[0]
        assert out.prompt_token_ids == [3, 4, 5, 6]
        assert out.token_ids == greedy(load_model(folder).model, [3, 4, 5, 6], 12)
        # streamed text continues the prompt's (here: a space between words)
        assert "w3 w4 w5 w6" + out.text == llm.tokenizer.decode([3, 4, 5, 6, *out.token_ids])


def test_chat_uses_the_template(llm: LLM) -> None:
    out = llm.chat([{"role": "user", "content": "hi"}], GREEDY)
    expected = llm.tokenizer.encode("<|bos|><|user|>\nhi<|end|>\n<|assistant|>\n", False)
    assert out.prompt_token_ids == expected


# -- exact reuse -----------------------------------------------------------------------


def test_reuse_from_the_workers_own_cache_is_exact(reference: dict[str, Any]) -> None:
    with LLM(store=None, **SMALL) as llm:
        second, cached = run_twice(llm)
        assert llm.stats()["prefill"]["cached_local_tokens"] > 0
    assert second == reference
    assert cached == [192, 224, 144]  # whole blocks, never the last prompt token


def test_reuse_from_the_stores_dram_is_exact(reference: dict[str, Any]) -> None:
    with LLM(prefix_caching=False, **SMALL) as llm:
        second, cached = run_twice(llm)
        store = llm.stats()["prefill"]["store"]
    assert second == reference
    assert cached == [192, 224, 144]
    assert store["loaded_blocks"]["dram"] > 0 and "nvme" not in store["loaded_blocks"]


def test_reuse_from_the_stores_nvme_is_exact(reference: dict[str, Any], tmp_path: Path) -> None:
    nvme_only = {
        "tiers.dram.enabled": "false",
        "tiers.nvme.enabled": "true",
        "tiers.nvme.path": str(tmp_path / "nvme"),
        "tiers.nvme.capacity_bytes": str(8 * MiB),
    }
    with (
        NodeThread(**nvme_only) as node,
        LLM(store=node.address, prefix_caching=False, **SMALL) as llm,
    ):
        second, _ = run_twice(llm)
        store = llm.stats()["prefill"]["store"]
    assert second == reference
    assert set(store["loaded_blocks"]) == {"nvme"}


def test_reuse_from_another_store_node_is_exact(reference: dict[str, Any]) -> None:
    with RedisServer() as redis:
        cluster = {"metadata.backend": "redis", "metadata.redis_url": redis.url}
        with NodeThread(**cluster) as a, NodeThread(**cluster) as b:
            with LLM(store=a.address, prefix_caching=False, **SMALL) as writer:
                for params in (GREEDY, SAMPLED):
                    writer.generate(PROMPTS, params)
            with LLM(store=b.address, prefix_caching=False, **SMALL) as reader:
                first = reader.generate(PROMPTS, GREEDY)
                outs = {
                    "greedy": [o.token_ids for o in first],
                    "sampled": [o.token_ids for o in reader.generate(PROMPTS, SAMPLED)],
                }
                store = reader.stats()["prefill"]["store"]
    assert first[0].metrics["cached_remote_tokens"] == 192  # all from node a
    assert outs == reference
    assert store["loaded_by_node"].get(a.node_id, 0) > 0


def test_bfloat16_reuse_from_the_store_is_exact() -> None:
    bf16 = {**SMALL, "dtype": "bfloat16"}
    with LLM(store=None, **bf16) as ref:
        expected = [o.token_ids for o in ref.generate(PROMPTS, SAMPLED)]
    with LLM(prefix_caching=False, **bf16) as llm:
        assert llm.cache.dtype == torch.bfloat16
        llm.generate(PROMPTS, SAMPLED)
        outs = llm.generate(PROMPTS, SAMPLED)
    assert [o.token_ids for o in outs] == expected
    assert [o.metrics["cached_store_tokens"] for o in outs] == [192, 224, 144]


def test_a_corrupted_cached_block_is_recomputed(reference: dict[str, Any]) -> None:
    with LLM(prefix_caching=False, **SMALL) as llm:
        llm.generate(PROMPTS, GREEDY)
        node = llm._store.node
        assert node is not None
        arena = node.node.store.shared_arena()
        assert arena is not None
        ns = llm.namespace.id
        from kvstore.hashing import prefix_keys

        keys = prefix_keys(ns, PROMPTS[0], 16)
        run = node.node.store.lease(ns, keys[3:4])
        arena.view(run.blocks[0].slot)[100] ^= 0x40  # bit rot in the store's DRAM
        llm._runtime.run(node.node.store.release_lease(run))
        outs = llm.generate(PROMPTS, GREEDY)
        stats = llm.stats()["prefill"]
    assert [o.token_ids for o in outs] == reference["greedy"]
    assert stats["recomputed_requests"] >= 1 and stats["store"]["corrupted_blocks"] >= 1


def test_an_unreachable_store_means_recomputing(reference: dict[str, Any]) -> None:
    with LLM(store=f"127.0.0.1:{free_port()}", **SMALL) as llm:
        outs = llm.generate(PROMPTS, GREEDY)
        store = llm.stats()["prefill"]["store"]
    assert [o.token_ids for o in outs] == reference["greedy"]
    assert store["unreachable"] >= 1 and not store["loaded_blocks"]


# -- stopping --------------------------------------------------------------------------


def test_stop_strings_tokens_and_max_tokens(llm: LLM) -> None:
    base = llm.generate(PROMPTS[0], SAMPLED)[0]
    text = base.text
    assert len(set(text)) > 3  # a varied continuation to cut
    stop = text[8:11]
    cut = llm.generate(PROMPTS[0], SamplingParams(**{**_fields(SAMPLED), "stop": [stop]}))[0]
    assert cut.finish_reason == "stop" and cut.text == text[: text.index(stop)]
    token = base.token_ids[5]
    first = base.token_ids.index(token)
    by_token = llm.generate(
        PROMPTS[0], SamplingParams(**{**_fields(SAMPLED), "stop_token_ids": [token]})
    )[0]
    assert by_token.finish_reason == "stop" and by_token.token_ids == base.token_ids[: first + 1]
    short = llm.generate(PROMPTS[0], SamplingParams(**{**_fields(SAMPLED), "max_tokens": 3}))[0]
    assert short.token_ids == base.token_ids[:3] and short.finish_reason == "length"


def test_streamed_text_never_shows_a_stop_string(llm: LLM) -> None:
    text = llm.generate(PROMPTS[1], SAMPLED)[0].text
    stop = text[10:14]
    params = SamplingParams(**{**_fields(SAMPLED), "stop": [stop, "never-seen"]})
    request = llm.engine.new_request(PROMPTS[1], params)

    async def pieces() -> list[str]:
        return [event.text async for event in llm.engine.stream(request)]

    streamed = llm._runtime.run(pieces())
    assert "".join(streamed) == text[: text.index(stop)]
    shown = ""
    for piece in streamed:
        shown += piece
        assert stop not in shown


def test_the_checkpoints_eos_tokens_end_generation(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt", {**LLAMA, "max_position_embeddings": 512})
    expected = greedy(load_model(folder).model, [3, 4, 5], 12)
    eos = expected[4]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, 49]}))
    with LLM(folder, **SMALL) as llm:
        params = SamplingParams(temperature=0, max_tokens=12)
        out = llm.generate([3, 4, 5], params)[0]
        assert out.finish_reason == "stop"
        assert out.token_ids == expected[: expected.index(eos) + 1]
        ignoring = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
        assert llm.generate([3, 4, 5], ignoring)[0].token_ids == expected


def test_generation_stops_at_the_end_of_the_context(llm: LLM) -> None:
    context = llm.loaded.config.max_position_embeddings
    out = llm.generate(prompt(context - 5), SamplingParams(temperature=0, max_tokens=64))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5


# -- bad input and cancellation --------------------------------------------------------


def test_bad_prompts_are_refused_with_a_reason(llm: LLM) -> None:
    with pytest.raises(InvalidRequest, match="prompt is empty"):
        llm.generate([[]], GREEDY)
    with pytest.raises(InvalidRequest, match="context is 2048"):
        llm.generate(prompt(2048), GREEDY)
    with pytest.raises(InvalidRequest, match="token id 999"):
        llm.generate([1, 999], GREEDY)
    with pytest.raises(InvalidRequest, match="2 prompts but 1 params"):
        llm.generate(["a", "b"], [GREEDY])
    assert llm.generate("still fine", GREEDY)[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -1.0), ("top_p", 0.0), ("top_k", -2), ("max_tokens", 0), ("stop", [""])],
)
def test_invalid_sampling_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidSampling, match=field):
        SamplingParams(**{field: value})  # type: ignore[arg-type]


def test_a_request_cancelled_mid_stream_frees_its_pages(llm: LLM) -> None:
    free_before = llm.cache.num_free
    request = llm.engine.new_request(prompt(100), SamplingParams(max_tokens=1000, ignore_eos=True))

    async def read_three() -> int:
        seen = 0
        stream = llm.engine.stream(request)
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.aclose()
        return seen

    assert llm._runtime.run(read_three()) == 3
    for _ in range(100):  # the decode worker lets go at its next step
        if llm.stats()["decode"]["cancelled"] == 1:
            break
        llm._runtime.run(asyncio.sleep(0.01))
    assert llm.stats()["decode"]["cancelled"] == 1
    cached = len(llm.prefill_worker.prefix)  # full prompt pages stay in the prefix cache
    assert llm.cache.num_free == free_before - cached


def _fields(params: SamplingParams) -> dict[str, Any]:
    return {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "max_tokens": params.max_tokens,
        "seed": params.seed,
    }
