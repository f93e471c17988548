"""In-process store nodes on port 0 and clients of them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.config import Config, load_config
from kvstore.server.serve import RunningNode, start_node
from tests.conftest import BLOCK

NodeFactory = Callable[..., Awaitable[RunningNode]]


def node_config(tmp_path: Path | None = None, **overrides: str) -> Config:
    values = {
        "store.node_id": f"node-{uuid.uuid4().hex[:8]}",
        "store.block_bytes": str(BLOCK),
        "tiers.dram.capacity_bytes": str(64 * BLOCK),
        "server.port": "0",
        "server.metrics_port": "0",
        "transfer.port": "0",
        "server.grace_s": "1",
        "metadata.heartbeat_interval_s": "0.2",
        "metadata.node_ttl_s": "1",
        **overrides,
    }
    return load_config(env={}, overrides=values)


@pytest.fixture
async def make_node() -> AsyncIterator[NodeFactory]:
    started: list[RunningNode] = []

    async def factory(**overrides: str) -> RunningNode:
        running = await start_node(node_config(**overrides))
        started.append(running)
        return running

    yield factory
    for running in started:
        await running.stop(grace_s=0.5)


@pytest.fixture
async def node(make_node: NodeFactory) -> RunningNode:
    return await make_node()


@pytest.fixture
async def client(node: RunningNode) -> AsyncIterator[StoreClient]:
    async with StoreClient(node.address, CallOptions(timeout_s=5)) as c:
        yield c
