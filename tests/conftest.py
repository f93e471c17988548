"""Fixtures shared by the whole suite."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from kvstore.config import Config, load_config
from kvstore.hashing import Namespace, prefix_keys
from kvstore.layout import BlockSpec, KVDtype
from kvstore.store import NodeStore
from kvstore.types import BlockKey

# 4 KiB blocks: 2 layers x (K, V) x 16 tokens x 2 heads x 16 dims x 2 bytes.
SPEC = BlockSpec(num_layers=2, num_kv_heads=2, head_dim=16, dtype=KVDtype.FLOAT16, block_tokens=16)
BLOCK = SPEC.block_bytes
NAMESPACE = Namespace("test-model", SPEC)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def block_bytes(seed: int) -> bytes:
    """Distinct, recognisable content for block ``seed``."""
    return (seed.to_bytes(4, "little") * (BLOCK // 4))[:BLOCK]


def chain_keys(n: int, start: int = 0) -> list[BlockKey]:
    tokens = list(range(start, start + n * SPEC.block_tokens))
    return prefix_keys(NAMESPACE.id, tokens, SPEC.block_tokens)


def store_config(tmp_path: Path, **overrides: str) -> Config:
    values = {
        "store.node_id": f"test-{uuid.uuid4().hex[:12]}",
        "store.block_bytes": str(BLOCK),
        "tiers.dram.capacity_bytes": str(8 * BLOCK),
        "tiers.nvme.enabled": "true",
        "tiers.nvme.path": str(tmp_path / "nvme"),
        "tiers.nvme.capacity_bytes": str(16 * BLOCK),
        "tiers.nvme.slab_bytes": str(8 * BLOCK),
        **overrides,
    }
    return load_config(env={}, overrides=values)


StoreFactory = Callable[..., Awaitable[NodeStore]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[StoreFactory]:
    """Open stores over ``tmp_path`` (same NVMe directory each time); closes them all."""
    opened: list[NodeStore] = []

    async def factory(**overrides: str) -> NodeStore:
        store = await NodeStore.open(store_config(tmp_path, **overrides), clock=clock)
        store.register_namespace(NAMESPACE)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        if not store.closed:
            await store.close()
