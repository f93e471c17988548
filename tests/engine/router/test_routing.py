"""The router over real workers: cache-aware placement, overload, API keys, failover.

Two prefill workers, each with its own store node (Redis metadata, so each node can
serve the other's blocks), and one decode worker, all as processes; routers run on a
thread of the test process."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.launch import free_port
from engine.router.costs import CostModel
from engine.router.metrics import RouterMetrics
from engine.router.profiling import decode_sample
from engine.router.workers import WorkerPool
from engine.service.client import DecodeClient
from kvstore._proto.strata.v1 import admin_pb2
from kvstore.client import StoreClient
from tests.engine.router.servers import RouterThread
from tests.engine.stores import TINY_BLOCK
from tests.processes import EngineProcess, ServeProcess
from tests.redis_server import RedisServer

MODEL = "strata-tiny-v1"
CACHE = {"engine.kv_cache_bytes": "16MiB", "engine.prefix_caching": "false"}
LONG = "A shared document that many requests ask about. " * 10  # 490 tokens


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    costs = tmp_path_factory.mktemp("router") / "costs.json"
    CostModel.default().save(costs)
    with RedisServer() as redis:
        store = {
            "store.block_bytes": str(TINY_BLOCK),
            "tiers.dram.capacity_bytes": "32MiB",
            "metadata.backend": "redis",
            "metadata.redis_url": redis.url,
        }
        with (
            ServeProcess(**store, **{"store.node_id": "node-1"}) as s1,
            ServeProcess(**store, **{"store.node_id": "node-2"}) as s2,
            EngineProcess(
                "prefill", **CACHE, **{"engine.store": s1.address, "prefill.port": "0"}
            ) as p1,
            EngineProcess(
                "prefill", **CACHE, **{"engine.store": s2.address, "prefill.port": "0"}
            ) as p2,
            EngineProcess(
                "decode",
                **CACHE,
                **{
                    "engine.store": "none",
                    "decode.port": str(free_port()),
                    "decode.data_port": "0",
                    "decode.prefill": p1.address,
                },
            ) as d,
        ):
            yield {
                "prefill": [p1, p2],
                "stores": [s1, s2],
                "decode": d,
                "router": {
                    "router.prefill": f"{p1.address},{p2.address}",
                    "router.decode": d.address,
                    "router.cost_model": str(costs),
                },
            }


def ask(url: str, text: str, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "prompt": text, "max_tokens": 2, "temperature": 0, **extra}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60)


def test_cache_aware_routing_follows_the_prefix(cluster: dict[str, Any]) -> None:
    with RouterThread(**cluster["router"]) as router:
        first = ask(router.url, LONG + "First question?")
        holder = first.headers["x-strata-prefill"]
        for i in range(4):
            again = ask(router.url, LONG + f"Question {i}?")
            assert again.headers["x-strata-prefill"] == holder
            assert again.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= 480
        other = ask(router.url, "Something else entirely. " * 20)
        assert other.status_code == 200
        assert router.stats()["placed"] == 6


SAMPLED = "families with a sample"


def store_hit_tokens(cluster: dict[str, Any]) -> tuple[int, int]:
    """(tokens served from the store nodes' tiers, tokens nodes took from peers)."""

    async def stats(address: str) -> admin_pb2.StatsResponse:
        async with StoreClient(address) as client:
            return await client.stats()

    tiers = peers = 0
    for store in cluster["stores"]:
        for ns in asyncio.run(stats(store.address)).namespaces:
            tiers += sum(h.tokens for h in ns.hits)
            peers += ns.peer_hit_tokens
    return tiers, peers


def router_metrics(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of the router's /metrics, by name and labels."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {SAMPLED: {}}
    for family in text_string_to_metric_families(text):
        if family.samples:
            out[SAMPLED][(("family", family.name),)] = 1.0
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_round_robin_spreads_and_pulls_from_the_other_node(cluster: dict[str, Any]) -> None:
    """Also: the router's cached prompt tokens by source agree with the store nodes' hit
    tokens for the same requests, and every router metric has a sample afterwards."""
    text = "Another shared document, read by everyone. " * 12
    tiers_before, peers_before = store_hit_tokens(cluster)
    with RouterThread(**cluster["router"], **{"router.policy": "round_robin"}) as router:
        replies = [ask(router.url, text + "Q0?")]
        time.sleep(1.0)  # its blocks are written back and published in the background
        replies += [ask(router.url, text + f"Q{i}?") for i in range(1, 4)]
        metrics = router_metrics(router.url)
    used = {r.headers["x-strata-prefill"] for r in replies}
    assert len(used) == 2  # both prefill workers
    cached = [r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] for r in replies]
    assert cached[0] == 0 and all(c >= 480 for c in cached[1:]), cached

    by_source = {
        dict(k)["source"]: v for k, v in metrics["strata_cached_prompt_tokens_total"].items()
    }
    tiers, peers = store_hit_tokens(cluster)
    assert by_source["peer"] > 0 and by_source["worker"] == 0  # prefix caching is off
    assert by_source["store"] + by_source["peer"] == tiers - tiers_before
    assert by_source["peer"] == peers - peers_before
    assert sum(by_source.values()) == sum(cached)
    assert metrics["strata_requests_total"] == {(("outcome", "ok"),): 4}
    registered = {f.name for f in RouterMetrics().registry.collect()}
    assert (
        registered - {dict(k)["family"] for k in metrics[SAMPLED]} == set()
    )  # none registered and never moved


def test_an_slo_no_placement_can_meet_is_a_429(cluster: dict[str, Any]) -> None:
    with RouterThread(**cluster["router"], **{"router.ttft_slo_s": "0.000001"}) as router:
        reply = ask(router.url, "hello")
        assert reply.status_code == 429
        assert int(reply.headers["retry-after"]) >= 1
        assert reply.json()["error"]["type"] == "rate_limit_error"
        assert router.stats()["rejected"] == 1


def test_too_many_requests_in_flight_is_a_429(cluster: dict[str, Any]) -> None:
    with RouterThread(**cluster["router"], **{"router.max_concurrency": "1"}) as router:
        started = threading.Event()
        body = {
            "model": MODEL,
            "prompt": "go on",
            "max_tokens": 400,
            "ignore_eos": True,
            "stream": True,
        }

        def long_stream() -> None:
            with httpx.stream("POST", f"{router.url}/v1/completions", json=body, timeout=60) as r:
                for _ in r.iter_lines():
                    started.set()

        thread = threading.Thread(target=long_stream)
        thread.start()
        assert started.wait(30)
        reply = ask(router.url, "me too")
        thread.join()
        assert reply.status_code == 429 and "retry-after" in reply.headers
        assert ask(router.url, "now me").status_code == 200
        metrics = router_metrics(router.url)
        assert metrics["strata_rejections_total"] == {(): 1}
        assert metrics["strata_requests_total"] == {
            (("outcome", "ok"),): 2,
            (("outcome", "rejected"),): 1,
        }


def test_a_profiled_decode_step_times_the_whole_batch_decoding_together(
    cluster: dict[str, Any],
) -> None:
    """Requests sent together do not start decoding together (each waits for its own
    prefill): a decode sample times only steps in which every one of them decodes, labels
    them with the decode worker's own count of sequences and context per step, and
    cancels the requests once it has its steps."""
    decode_address, prefill_address = cluster["decode"].address, cluster["prefill"][0].address
    prompts = [[(7 * i + j) % 200 + 3 for j in range(48 * (i + 1))] for i in range(4)]

    async def profile() -> tuple[tuple[float, float, float], dict[str, Any], dict[str, Any]]:
        pool = WorkerPool([prefill_address], [decode_address])
        async with DecodeClient(decode_address) as client:
            try:
                await pool.start()
                before = (await client.stats())["decode"]
                sample = await decode_sample(
                    pool.decode[decode_address], pool.prefill[prefill_address], prompts, (), 512
                )
                await asyncio.sleep(0.5)  # the cancellations reach the worker
                after = (await client.stats())["decode"]
            finally:
                await pool.close()
        return sample, before, after

    (batch, context, seconds), before, after = asyncio.run(profile())
    assert after["requests"] - before["requests"] == len(prompts)
    assert batch == len(prompts)  # all of them, every step timed
    prompt_tokens = sum(len(p) for p in prompts)
    # each one's prompt and the tokens it had generated: at least one, at most its 512
    assert prompt_tokens < context < prompt_tokens + len(prompts) * 512
    assert seconds > 0
    # the whole call ran more steps than it timed, on fewer sequences a step (the ramp)
    steps = after["steps"] - before["steps"]
    assert (after["batched_tokens"] - before["batched_tokens"]) / steps < batch
    # nobody needed 512 tokens: the sample cancelled them once it had its steps
    assert after["cancelled"] - before["cancelled"] == len(prompts)
    assert after["generated_tokens"] - before["generated_tokens"] < len(prompts) * 512


def test_a_decode_sample_whose_requests_fail_raises_instead_of_waiting(
    cluster: dict[str, Any],
) -> None:
    decode_address = cluster["decode"].address

    async def sample() -> None:
        pool = WorkerPool([cluster["prefill"][0].address], [decode_address])
        try:
            await pool.start()
            nowhere = replace(pool.prefill[cluster["prefill"][0].address], id="127.0.0.1:9")
            await asyncio.wait_for(
                decode_sample(pool.decode[decode_address], nowhere, [[5] * 32] * 2, (), 64), 30
            )
        finally:
            await pool.close()

    with pytest.raises(grpc.aio.AioRpcError):
        asyncio.run(sample())


def test_an_api_key_is_required_when_set(cluster: dict[str, Any]) -> None:
    with RouterThread(**cluster["router"], **{"router.api_key": "s3cret"}) as router:
        denied = ask(router.url, "hello")
        assert denied.status_code == 401
        assert denied.json()["error"]["type"] == "authentication_error"
        client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="s3cret", max_retries=0)
        reply = client.completions.create(model=MODEL, prompt="hello", max_tokens=2)
        assert reply.usage is not None and reply.usage.completion_tokens == 2
        assert httpx.get(f"{router.url}/health", timeout=10).status_code == 200


def test_a_killed_prefill_worker_is_routed_around(cluster: dict[str, Any]) -> None:
    """Last in this module: it kills a worker."""
    with RouterThread(**cluster["router"], **{"router.policy": "round_robin"}) as router:
        cluster["prefill"][0].proc.kill()
        replies = [ask(router.url, f"Are you there {i}?") for i in range(4)]
        assert [r.status_code for r in replies] == [200] * 4
        assert {r.headers["x-strata-prefill"] for r in replies} == {cluster["prefill"][1].address}
        stats = router.stats()
        workers = stats["workers"]
        assert isinstance(workers, dict)
        assert workers[cluster["prefill"][0].address]["healthy"] is False
