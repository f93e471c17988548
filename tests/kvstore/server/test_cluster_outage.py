"""A ``ClusterClient`` through a Redis outage: it keeps the last membership it saw and
goes to the nodes directly, then uses Redis again once it is back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvstore.client import ClusterClient
from kvstore.client.calls import CallOptions
from tests.conftest import NAMESPACE, block_bytes, chain_keys
from tests.kvstore.server.test_cluster import cluster_flags, until
from tests.processes import ServeProcess
from tests.redis_server import RedisServer


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def test_the_cluster_client_serves_through_a_redis_outage(redis: RedisServer) -> None:
    with (
        ServeProcess(**cluster_flags(redis, "node-a")),
        ServeProcess(**cluster_flags(redis, "node-b")),
    ):
        async with ClusterClient(redis.url, CallOptions(timeout_s=2), refresh_s=0.2) as cluster:
            ns = await cluster.register_namespace(NAMESPACE)
            assert len(await cluster.nodes(refresh=True)) == 2
            before = [chain_keys(2, start=1000 * i) for i in range(6)]
            for i, keys in enumerate(before):
                await cluster.put(ns, keys, [block_bytes(i), block_bytes(i + 100)])

            redis.stop()
            during = [chain_keys(2, start=1000 * i) for i in range(6, 12)]
            for i, keys in enumerate(during, start=6):  # every put still lands somewhere
                assert (await cluster.put(ns, keys, [block_bytes(i)] * 2)).num_stored == 2
            assert {n.node_id for n in await cluster.nodes(refresh=True)} == {"node-a", "node-b"}
            assert cluster.degraded
            for i, keys in enumerate(before):  # found by asking the nodes themselves
                result = await cluster.get(ns, keys)
                assert result.num_hits == 2 and bytes(result.blocks[1]) == block_bytes(i + 100)
            for i, keys in enumerate(during, start=6):
                result = await cluster.get(ns, keys)
                assert result.num_hits == 2 and bytes(result.blocks[0]) == block_bytes(i)
            placed = {(await cluster.lookup(ns, keys))[0].node_id for keys in during}
            assert placed == {"node-a", "node-b"}  # placement still spreads chains

            redis.start()

            async def recovered() -> bool:
                await cluster.nodes(refresh=True)
                return not cluster.degraded and len(await cluster.nodes()) == 2

            await until(recovered, timeout_s=10)
            assert (await cluster.get(ns, before[0])).num_hits == 2
