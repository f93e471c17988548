"""Namespace limits over gRPC (status codes naming the limit), the admin RPC that removes
a namespace, and the bounded ``namespace`` label of the metrics."""

from __future__ import annotations

import re

import pytest

from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.errors import CapacityExceeded, InvalidArgument, NotFound
from kvstore.hashing import Namespace, prefix_keys
from tests.conftest import SPEC, block_bytes
from tests.kvstore.server.conftest import NodeFactory
from tests.kvstore.server.test_metrics import scrape


def model(i: int) -> Namespace:
    return Namespace(f"model-{i:02d}", SPEC)


async def test_limits_are_grpc_errors_naming_them(make_node: NodeFactory) -> None:
    node = await make_node(**{"store.max_namespaces": "2", "store.max_model_id_bytes": "128"})
    async with StoreClient(node.address, CallOptions(timeout_s=5)) as client:
        with pytest.raises(InvalidArgument, match=r"store\.max_model_id_bytes = 128"):
            await client.register_namespace(Namespace("x" * (1 << 20), SPEC))
        first = await client.register_namespace(model(1))
        await client.register_namespace(model(2))
        with pytest.raises(CapacityExceeded, match=r"store.max_namespaces = 2.*'model-03'"):
            await client.register_namespace(model(3))
        keys = prefix_keys(first, list(range(2 * SPEC.block_tokens)), SPEC.block_tokens)
        await client.put(first, keys, [block_bytes(0), block_bytes(1)])
        assert await client.remove_namespace(first) == 2
        with pytest.raises(NotFound):
            await client.remove_namespace(first)
        with pytest.raises(InvalidArgument, match="namespace_id"):
            await client.remove_namespace(b"short")  # type: ignore[arg-type]
        await client.register_namespace(model(3))  # room again


async def test_metrics_label_only_the_busiest_namespaces(make_node: NodeFactory) -> None:
    node = await make_node(**{"server.metrics_max_namespaces": "2"})
    assert node.metrics_port is not None
    async with StoreClient(node.address, CallOptions(timeout_s=5)) as client:
        for i in range(6):
            ns = await client.register_namespace(model(i))
            keys = prefix_keys(ns, list(range(SPEC.block_tokens)), SPEC.block_tokens)
            for _ in range(i + 1):  # model-05 is the busiest, then model-04
                await client.get(ns, keys)
    _, body = await scrape(node.metrics_port)
    misses = re.findall(
        r'strata_miss_blocks_total\{namespace="([^"]+)",reason="[a-z_]+"\} (\S+)', body
    )
    by_model = {name.split(" (")[0]: float(v) for name, v in misses}  # "model (id prefix)"
    assert by_model == {"model-05": 6, "model-04": 5, "_other": 10}
