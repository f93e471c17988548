"""The Prometheus endpoint: hit/miss counters per tier, namespace and reason; bytes per
tier; latency histograms per RPC."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.server.serve import RunningNode
from kvstore.stats import namespace_label
from kvstore.types import TierKind
from tests.conftest import BLOCK, NAMESPACE, block_bytes, chain_keys
from tests.kvstore.server.conftest import NodeFactory


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
    model = namespace_label(NAMESPACE.model_id, ns)
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


async def test_every_registered_metric_has_a_sample_after_a_workload(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    """Puts, hits, misses, a pin, demotion to NVMe, promotion back, a drop: afterwards
    every family the node registers has at least one sample (none silently stays empty)."""
    node = await make_node(
        **{
            "tiers.dram.capacity_bytes": str(4 * BLOCK),
            "tiers.nvme.enabled": "true",
            "tiers.nvme.path": str(tmp_path),
            "tiers.nvme.capacity_bytes": str(64 * BLOCK),
            "tiers.nvme.slab_bytes": str(16 * BLOCK),
            "store.promotion_min_hits": "1",
        }
    )
    assert node.metrics_port is not None
    async with StoreClient(node.address, CallOptions(timeout_s=10)) as client:
        ns = await client.register_namespace(NAMESPACE)
        keys = chain_keys(8)
        await client.put(ns, chain_keys(1, start=100), [block_bytes(9)])  # a leaf, sinks first
        for i in range(0, 8, 2):  # later puts push the first ones down to NVMe
            await client.put(
                ns, keys[i : i + 2], [block_bytes(i), block_bytes(i + 1)], *keys[i - 1 : i]
            )
        assert (await client.get(ns, keys[:2])).tiers == [TierKind.NVME] * 2  # promoted
        assert (await client.get(ns, chain_keys(1, start=500))).num_hits == 0  # a miss
        await client.pin(ns, keys[-1:], 60)
        assert await client.evict(TierKind.NVME, 1) >= 1
    _, body = await scrape(node.metrics_port)
    sampled = {f.name for f in text_string_to_metric_families(body) if f.samples}
    registered = {f.name for f in node.metrics.registry.collect()}
    assert registered - sampled == set()
    assert value(body, 'strata_demoted_blocks_total{source="dram",target="nvme"}') >= 4
    assert value(body, 'strata_promoted_blocks_total{source="nvme",target="dram"}') >= 1
    assert value(body, 'strata_evicted_blocks_total{tier="nvme"}') >= 1
    assert value(body, "strata_pinned_blocks") == 1
    assert value(body, "strata_open_reservations") == value(body, "strata_read_pins") == 0
