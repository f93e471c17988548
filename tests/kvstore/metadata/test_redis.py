"""The Redis backend's own promises: failures surface fast, it recovers, round trips are few.

Round trips are counted on the client's sockets: every request redis-py sends, one command
or a whole pipeline, goes through one ``send_packed_command`` call, whose reply is then
read before the next one. So "one call of it" is "one round trip".
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from kvstore.config import MetadataBackend
from kvstore.errors import ConfigError
from kvstore.metadata.base import IndexChange, MetadataUnavailable
from kvstore.metadata.factory import open_metadata
from kvstore.metadata.memory import MemoryMetadata
from kvstore.metadata.redis import RedisMetadata
from kvstore.types import TierKind
from tests.kvstore.metadata.conftest import open_redis
from tests.kvstore.metadata.test_contract import key, node
from tests.redis_server import RedisServer, free_port, silent_port

DRAM, NVME = TierKind.DRAM, TierKind.NVME


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server this test alone may stop and restart."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def backend(redis_server: RedisServer) -> AsyncIterator[RedisMetadata]:
    md = open_redis(redis_server)
    try:
        yield md
    finally:
        await md.close()


class RoundTrips:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = AbstractConnection.send_packed_command

        async def counting(conn: AbstractConnection, *args: object, **kwargs: object) -> None:
            self.count += 1
            await original(conn, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


async def every_call_fails(md: RedisMetadata, bound_s: float) -> None:
    """Each Protocol call raises MetadataUnavailable, each within ``bound_s``."""
    calls = [
        lambda: md.register(node("n1"), 5.0),
        md.nodes,
        lambda: md.publish("n1", [IndexChange(key(1), DRAM)]),
        lambda: md.locate([key(1)]),
        lambda: md.replace_index("n1", [(key(1), DRAM)]),
        lambda: md.unregister("n1"),
        md.reap_dead,
    ]
    for call in calls:
        start = time.monotonic()
        with pytest.raises(MetadataUnavailable, match=r"redis at 127\.0\.0\.1"):
            await call()
        assert time.monotonic() - start < bound_s


async def test_nothing_listening_raises_promptly() -> None:
    md = RedisMetadata(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    try:
        await every_call_fails(md, bound_s=0.6)
    finally:
        await md.close()


async def test_a_server_that_never_answers_times_out() -> None:
    with silent_port() as port:
        md = RedisMetadata(f"redis://127.0.0.1:{port}/0", timeout_s=0.2)
        try:
            for call in (md.nodes, lambda: md.locate([key(1)])):
                start = time.monotonic()
                with pytest.raises(MetadataUnavailable, match=r"timed out|Timeout"):
                    await call()
                assert 0.15 < time.monotonic() - start < 0.6
        finally:
            await md.close()


async def test_redis_stopped_then_restarted_on_the_same_port(own_server: RedisServer) -> None:
    md = open_redis(own_server, timeout_s=0.5)
    try:
        await md.register(node("n1"), 30.0)
        await md.publish("n1", [IndexChange(key(1), DRAM)])
        assert await md.locate([key(1)]) == [{"n1": DRAM}]
        own_server.stop()
        await every_call_fails(md, bound_s=0.6)
        own_server.start()  # same port, empty: the node re-registers and re-publishes
        assert await md.nodes() == []
        await md.register(node("n1"), 30.0)
        await md.replace_index("n1", [(key(1), NVME)])
        assert await md.locate([key(1)]) == [{"n1": NVME}]
    finally:
        await md.close()


async def test_a_restart_between_two_calls_goes_unnoticed(own_server: RedisServer) -> None:
    md = open_redis(own_server, timeout_s=0.5)
    try:
        await md.register(node("n1"), 30.0)  # leaves a pooled connection behind
        own_server.stop()
        own_server.start()
        await md.register(node("n1"), 30.0)  # the stale connection is replaced, no error
        assert [n.node_id for n in await md.nodes()] == ["n1"]
    finally:
        await md.close()


async def test_round_trips_per_call(
    backend: RedisMetadata, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = RoundTrips(monkeypatch)
    await backend.nodes()  # connects (HELLO/SETINFO are not ours to count)
    trips.take()
    await backend.register(node("n1"), 30.0)
    assert trips.take() == 1
    changes = [IndexChange(key(i), DRAM if i % 3 else None) for i in range(5_000)]
    await backend.publish("n1", changes)
    assert trips.take() == 1
    assert len(await backend.locate([key(i) for i in range(10_000)])) == 10_000
    assert trips.take() == 1
    await backend.nodes()
    assert trips.take() == 1


async def test_replace_index_in_chunks(redis_server: RedisServer) -> None:
    md = RedisMetadata(redis_server.url, key_prefix="chunks", timeout_s=2.0, chunk_entries=1_000)
    try:
        await md.register(node("n1"), 30.0)
        await md.publish("n1", [IndexChange(key(i), DRAM) for i in range(3_500)])
        await md.replace_index("n1", ((key(i), NVME) for i in range(2_500, 6_000)))
        found = await md.locate([key(i) for i in range(6_000)])
        assert found == [{}] * 2_500 + [{"n1": NVME}] * 3_500
        await md.unregister("n1")
        assert await md.locate([key(i) for i in range(6_000)]) == [{}] * 6_000
    finally:
        await md.close()


async def test_malformed_node_records_are_skipped(redis_server: RedisServer) -> None:
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw.set(b"malformed:node:bad", b"{not json", px=30_000)
        await raw.sadd(b"malformed:nodes", "bad")
    finally:
        await raw.aclose()
    md = RedisMetadata(redis_server.url, key_prefix="malformed", timeout_s=2.0)
    try:
        await md.register(node("good"), 30.0)
        assert [n.node_id for n in await md.nodes()] == ["good"]
    finally:
        await md.close()


async def test_closed_backend_raises(redis_server: RedisServer) -> None:
    md = open_redis(redis_server)
    await md.close()
    await md.close()  # idempotent
    with pytest.raises(MetadataUnavailable, match="closed"):
        await md.nodes()


async def test_open_metadata_picks_the_backend(redis_server: RedisServer) -> None:
    opts = {"redis_url": redis_server.url, "key_prefix": "factory", "timeout_s": 1.0}
    memory = open_metadata("memory", **opts)  # type: ignore[arg-type]
    assert isinstance(memory, MemoryMetadata)
    remote = open_metadata(MetadataBackend.REDIS, **opts)  # type: ignore[arg-type]
    assert isinstance(remote, RedisMetadata)
    try:
        assert await remote.nodes() == []
    finally:
        await remote.close()
    with pytest.raises(ConfigError, match=r"metadata\.backend"):
        open_metadata("etcd", **opts)  # type: ignore[arg-type]
