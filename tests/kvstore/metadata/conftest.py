"""Fixtures: one contract suite, run against both metadata backends.

``metadata`` is a ``MemoryMetadata`` on the suite's fake clock, or a ``RedisMetadata`` on
a private redis-server (one per module, a fresh key prefix per test). ``elapse`` lets
TTLs pass: it advances the fake clock, or really sleeps for Redis (keep TTLs short).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from kvstore.metadata.base import MetadataService
from kvstore.metadata.memory import MemoryMetadata
from kvstore.metadata.redis import RedisMetadata
from tests.conftest import FakeClock
from tests.redis_server import RedisServer

Elapse = Callable[[float], Awaitable[None]]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def open_redis(server: RedisServer, timeout_s: float = 2.0) -> RedisMetadata:
    """A backend on ``server`` under a fresh key prefix (tests never see each other)."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    return RedisMetadata(server.url, key_prefix=prefix, timeout_s=timeout_s)


@pytest.fixture(params=["memory", "redis"])
async def metadata(
    request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[MetadataService]:
    if request.param == "memory":
        yield MemoryMetadata(clock=clock)
        return
    backend = open_redis(request.getfixturevalue("redis_server"))
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
def elapse(metadata: MetadataService, clock: FakeClock) -> Elapse:
    async def wait(seconds: float) -> None:
        if isinstance(metadata, MemoryMetadata):
            clock.advance(seconds)
        else:
            await asyncio.sleep(seconds)

    return wait
