"""Data-plane servers in the test process, serving plain segments and/or a store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from kvstore.server.dataplane import serve_store
from kvstore.store import NodeStore
from kvstore.transfer.engine import TransferEngine
from kvstore.transfer.segments import Segment, SegmentRegistry
from kvstore.transfer.server import SegmentServer

ServerFactory = Callable[..., Awaitable[SegmentServer]]
EngineFactory = Callable[..., TransferEngine]
HOST = "host-a"


def segment(name: str, size: int, fill: int = 0) -> Segment:
    return Segment(name, memoryview(bytearray([fill]) * size))


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    servers: list[SegmentServer] = []

    async def factory(
        *segments: Segment,
        store: NodeStore | None = None,
        hosts: Sequence[str] = ("127.0.0.1",),
        node_id: str = "server",
        host_id: str = HOST,
        **kwargs: object,
    ) -> SegmentServer:
        """A server of ``segments``; with ``store``, serving its ops too."""
        registry = SegmentRegistry()
        for seg in segments:
            registry.register(seg)
        server = SegmentServer(node_id, host_id, registry, **kwargs)  # type: ignore[arg-type]
        if store is not None:
            serve_store(server, store)
        await server.start(hosts, 0)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.close()


@pytest.fixture
async def make_engine() -> AsyncIterator[EngineFactory]:
    engines: list[TransferEngine] = []

    def factory(**kwargs: object) -> TransferEngine:
        kwargs.setdefault("host_id", "host-b")  # another host unless a test says otherwise
        kwargs.setdefault("timeout_s", 5.0)
        engine = TransferEngine(**kwargs)  # type: ignore[arg-type]
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.close()
