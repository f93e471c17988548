"""Store nodes for engine tests, each running on a loop thread of its own."""

from __future__ import annotations

import uuid

from kvstore.config import load_config
from kvstore.connector.loop import LoopThread
from kvstore.server.serve import RunningNode, start_node

TINY_BLOCK = 32 * 1024  # a tiny-model page: 4 layers x K,V x 16 tokens x 2 heads x 32 x 4 B


class NodeThread:
    """A store node (gRPC and data plane on free ports) until ``stop``."""

    def __init__(self, **overrides: str) -> None:
        self.node_id = overrides.pop("store.node_id", f"node-{uuid.uuid4().hex[:6]}")
        values = {
            "store.node_id": self.node_id,
            "store.block_bytes": str(TINY_BLOCK),
            "tiers.dram.capacity_bytes": str(256 * TINY_BLOCK),
            "server.port": "0",
            "server.metrics_enabled": "false",
            "transfer.port": "0",
            "server.grace_s": "0.5",
            "metadata.heartbeat_interval_s": "0.2",
            "metadata.node_ttl_s": "2",
            **overrides,
        }
        self._loop = LoopThread(name=f"store-{self.node_id}")
        self.running: RunningNode = self._loop.run(
            start_node(load_config(env={}, overrides=values))
        )
        self.address = self.running.address

    def stop(self) -> None:
        self._loop.run(self.running.stop(grace_s=0.2))
        self._loop.close()

    def __enter__(self) -> NodeThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
