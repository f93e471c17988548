"""The Prometheus endpoint: hit/miss counters per tier, namespace and reason; bytes per
tier; latency histograms per RPC."""

from __future__ import annotations

import asyncio

from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.server.serve import RunningNode
from tests.conftest import BLOCK, NAMESPACE, block_bytes, chain_keys


async def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    head, _, body = response.partition("\r\n\r\n")
    return head.splitlines()[0], body


def value(body: str, prefix: str) -> float:
    for line in body.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {prefix!r}")


async def test_metrics_count_what_the_store_served(client: StoreClient, node: RunningNode) -> None:
    assert node.metrics_port is not None
    ns = await client.register_namespace(NAMESPACE)
    keys = chain_keys(3)
    await client.put(ns, keys[:2], [block_bytes(0), block_bytes(1)])
    await client.get(ns, keys)
    status, body = await scrape(node.metrics_port)
    assert status.endswith("200 OK")
    model = NAMESPACE.model_id
    assert value(body, f'strata_hit_blocks_total{{namespace="{model}",tier="dram"}}') == 2
    assert value(body, f'strata_hit_tokens_total{{namespace="{model}",tier="dram"}}') == 32
    assert (
        value(body, f'strata_miss_blocks_total{{namespace="{model}",reason="never_stored"}}') == 1
    )
    assert value(body, 'strata_tier_used_bytes{tier="dram"}') == 2 * BLOCK
    assert value(body, 'strata_tier_capacity_bytes{tier="dram"}') == 64 * BLOCK
    assert value(body, "strata_put_blocks_total") == 2
    assert value(body, "strata_degraded") == 0
    # Control over gRPC, bulk bytes over the data plane (shared memory on this host).
    assert value(body, 'strata_rpc_duration_seconds_count{code="OK",method="DataPlane"}') == 1
    assert value(body, 'strata_dataplane_duration_seconds_count{op="PUT_KEYS"}') == 1
    assert value(body, 'strata_dataplane_duration_seconds_count{op="ACQUIRE"}') == 1


async def test_rpc_latencies_on_the_grpc_path(node: RunningNode) -> None:
    assert node.metrics_port is not None
    async with StoreClient(node.address, CallOptions(data_plane=False)) as client:
        ns = await client.register_namespace(NAMESPACE)
        await client.put(ns, chain_keys(1), [block_bytes(0)])
        await client.get(ns, chain_keys(1))
    _, body = await scrape(node.metrics_port)
    assert value(body, 'strata_rpc_duration_seconds_count{code="OK",method="Get"}') == 1
    assert value(body, 'strata_rpc_duration_seconds_count{code="OK",method="Put"}') == 1


async def test_other_paths_are_not_found(node: RunningNode) -> None:
    assert node.metrics_port is not None
    status, _ = await scrape(node.metrics_port, "/")
    assert "404" in status
