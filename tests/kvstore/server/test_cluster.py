"""Three ``kvstore serve`` processes sharing a real redis-server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from kvstore.admin.summary import cluster_summary, stats_summary
from kvstore.client import ClusterClient, StoreClient
from kvstore.client.calls import CallOptions
from kvstore.errors import KVStoreError
from kvstore.metadata.redis import RedisMetadata
from kvstore.server.serve import start_node
from tests.conftest import BLOCK, NAMESPACE, block_bytes, chain_keys
from tests.kvstore.server.conftest import node_config
from tests.processes import ServeProcess
from tests.redis_server import RedisServer

TTL_S = 1.0


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def cluster_flags(redis: RedisServer, node_id: str) -> dict[str, str]:
    return {
        "store.node_id": node_id,
        "store.block_bytes": str(BLOCK),
        "tiers.dram.capacity_bytes": str(256 * BLOCK),
        "metadata.backend": "redis",
        "metadata.redis_url": redis.url,
        "metadata.node_ttl_s": str(TTL_S),
        "metadata.heartbeat_interval_s": "0.2",
        "metadata.publish_interval_s": "0.02",
        "server.peer_timeout_s": "2",
    }


async def until(predicate, timeout_s: float = 5.0, step_s: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(step_s)
    raise AssertionError("condition not met in time")


async def test_put_on_a_found_on_c_read_through_b(redis: RedisServer) -> None:
    with (
        ServeProcess(**cluster_flags(redis, "node-a")) as a,
        ServeProcess(**cluster_flags(redis, "node-b")) as b,
        ServeProcess(**cluster_flags(redis, "node-c")) as c,
    ):
        keys, data = chain_keys(6), [block_bytes(i) for i in range(6)]
        async with (
            StoreClient(a.address) as ca,
            StoreClient(b.address) as cb,
            StoreClient(c.address) as cc,
        ):
            ns = await ca.register_namespace(NAMESPACE)
            for client in (cb, cc):
                await client.register_namespace(NAMESPACE)
            assert (await ca.put(ns, keys, data)).num_stored == 6

            async def seen_from_c():  # type: ignore[no-untyped-def]
                return [h for h in await cc.lookup(ns, keys) if h.node_id == "node-a"]

            (holder,) = await until(seen_from_c)
            assert holder.num_blocks == 6 and holder.address == a.address
            assert len(await cc.nodes()) == 3

            first = await cb.get(ns, keys)  # node B holds nothing: it reads from A
            assert first.num_hits == 6 and set(first.node_ids) == {"node-a"}
            assert [bytes(x) for x in first.blocks] == data
            again = await cb.get(ns, keys)  # and kept a copy
            assert set(again.node_ids) == {"node-b"} and [bytes(x) for x in again.blocks] == data
            assert (await cb.stats()).peer_fetched_blocks == 6
            local_only = await cc.get(ns, keys, local_only=True)
            assert local_only.num_hits == 0

            # each block a client saw counts once: B answered 6 from A (peer hits, no
            # misses) then 6 from its copy; A counts the 6 it served B; C missed 6.
            a_s, b_s, c_s = [stats_summary(await x.stats()) for x in (ca, cb, cc)]
            assert (b_s["peer_hit_blocks"], b_s["local_hit_blocks"], b_s["miss_blocks"]) == (
                6,
                6,
                0,
            )
            assert b_s["hit_rate"] == 1.0 and b_s["namespaces"][0]["hit_blocks"]["peer"] == 6
            assert (a_s["local_hit_blocks"], a_s["miss_blocks"]) == (6, 0)
            assert (c_s["hit_blocks"], c_s["miss_blocks"]) == (0, 6)
            total = cluster_summary([a_s, b_s, c_s])
            assert (total["hit_blocks"], total["miss_blocks"]) == (12, 6)


async def test_cluster_client_routes_and_places(redis: RedisServer) -> None:
    with (
        ServeProcess(**cluster_flags(redis, "node-a")),
        ServeProcess(**cluster_flags(redis, "node-b")),
    ):
        async with ClusterClient(redis.url) as cluster:
            assert {n.node_id for n in await cluster.nodes(refresh=True)} == {"node-a", "node-b"}
            ns = await cluster.register_namespace(NAMESPACE)
            chains = [chain_keys(3, start=1000 * i) for i in range(8)]
            for i, keys in enumerate(chains):
                await cluster.put(ns, keys, [block_bytes(i)] * 3)
            placed = set()
            for i, keys in enumerate(chains):

                async def holders(keys=keys):  # type: ignore[no-untyped-def]
                    return await cluster.lookup(ns, keys)

                (holder,) = await until(holders)
                placed.add(holder.node_id)
                result = await cluster.get(ns, keys)
                assert result.num_hits == 3 and bytes(result.blocks[2]) == block_bytes(i)
                assert set(result.node_ids) == {holder.node_id}  # read where it lives
            assert placed == {"node-a", "node-b"}  # rendezvous placement spreads chains
            # A continuation goes where its parent lives.
            tail = chain_keys(4, start=0)[3:]
            await cluster.put(ns, tail, [block_bytes(99)], parent=chains[0][-1])
            owner = (await cluster.lookup(ns, chains[0]))[0].node_id

            async def whole_chain():  # type: ignore[no-untyped-def]
                return [
                    h for h in await cluster.lookup(ns, [*chains[0], *tail]) if h.num_blocks == 4
                ]

            (longer,) = await until(whole_chain)
            assert longer.node_id == owner


async def test_a_killed_node_drops_out_within_the_ttl(redis: RedisServer) -> None:
    """kill -9 mid-load: lookups stop naming it within the TTL, no call outlives its
    deadline, and no wrong byte is ever returned."""
    with (
        ServeProcess(**cluster_flags(redis, "node-a")) as a,
        ServeProcess(**cluster_flags(redis, "node-b")) as b,
        ServeProcess(**cluster_flags(redis, "node-c")) as c,
    ):
        keys, data = chain_keys(8), [block_bytes(i) for i in range(8)]
        deadline_s = 1.5
        options = CallOptions(timeout_s=deadline_s, retries=1)
        async with StoreClient(a.address) as ca, StoreClient(c.address, options) as cc:
            ns = await ca.register_namespace(NAMESPACE)
            await cc.register_namespace(NAMESPACE)
            await ca.put(ns, keys, data)
            await until(lambda: cc.lookup(ns, keys))

            stop = asyncio.Event()
            worst = [0.0]
            errors: list[str] = []

            async def load(address: str) -> int:
                served = 0
                async with StoreClient(address, options) as client:
                    await client.register_namespace(NAMESPACE)
                    while not stop.is_set():
                        start = time.monotonic()
                        try:
                            result = await client.get(ns, keys)
                            for i, block in enumerate(result.blocks):
                                assert bytes(block) == data[i], "wrong bytes served"
                            served += result.num_hits
                        except KVStoreError as exc:
                            errors.append(type(exc).__name__)
                        worst[0] = max(worst[0], time.monotonic() - start)
                        await asyncio.sleep(0.01)
                return served

            loads = [asyncio.create_task(load(addr)) for addr in (b.address, c.address)]
            await asyncio.sleep(0.5)
            a.kill()  # SIGKILL: no unregister, no goodbye
            killed_at = time.monotonic()

            async def a_gone() -> bool:
                return all(h.node_id != "node-a" for h in await cc.lookup(ns, keys))

            await until(a_gone, timeout_s=TTL_S + 2)
            gone_after = time.monotonic() - killed_at
            await asyncio.sleep(0.5)
            stop.set()
            served = await asyncio.gather(*loads)
        assert gone_after <= TTL_S + 0.3, gone_after
        assert worst[0] <= deadline_s + 0.5, worst[0]
        assert sum(served) > 0
        nodes = await RedisMetadata(redis.url).nodes()
        assert {n.node_id for n in nodes} == {"node-b", "node-c"}


async def test_redis_outage_degrades_then_republishes(redis: RedisServer) -> None:
    overrides = {k: v for k, v in cluster_flags(redis, "solo").items()}
    running = await start_node(node_config(**overrides))
    try:
        async with StoreClient(running.address) as client:
            ns = await client.register_namespace(NAMESPACE)
            before = chain_keys(3)
            await client.put(ns, before, [block_bytes(i) for i in range(3)])
            redis.stop()

            async def degraded() -> bool:
                return (await client.stats()).degraded

            await until(degraded, timeout_s=5)
            assert (await client.get(ns, before)).num_hits == 3  # local hits go on
            during = chain_keys(2, start=500)
            await client.put(ns, during, [block_bytes(7), block_bytes(8)])
            (holder,) = await client.lookup(ns, before)  # the local view still answers
            assert holder.node_id == "solo"

            redis.start()  # comes back empty: the node must publish everything again

            async def healthy() -> bool:
                return not (await client.stats()).degraded

            await until(healthy, timeout_s=5)
            metadata = RedisMetadata(redis.url)
            try:

                async def republished() -> bool:
                    located = await metadata.locate([*before, *during])
                    return all("solo" in holders for holders in located)

                await until(republished, timeout_s=5)
            finally:
                await metadata.close()
    finally:
        await running.stop(grace_s=0.5)
