"""Reading blocks another node holds: through the client's own node, or straight from
the holder's data plane (as Mooncake's client does).

Two store nodes and Redis metadata, each a separate process on 127.0.0.1 (see
``bench.procs``). Node A has this machine's host id; node B announces another
(``transfer.host_id``), so A reaches B over the data plane's TCP, as it would reach a
node on another host. Every block of a read is held by B only, in DRAM; A keeps no
copy (``server.cache_peer_reads = false``), so every round crosses between the nodes.

* ``via_node_*``: ``StoreClient(A).get`` (today's path): the client's data-plane read at
  A finds nothing, then a gRPC Get to A, which asks Redis who holds the run, reads it from
  B over TCP, verifies it and streams it back over gRPC. Two hops, two copies.
* ``direct_*``: the same client asks A where the run is (``lookup``: the same Redis
  queries) and reads it from B's data plane over TCP (``StoreClient(B).get(...,
  local_only=True)``), bytes landing in the caller's buffers. Connections to B are set up
  before timing (a client would keep them).

Per block size (1m, 4m): ``blocks_per_get`` blocks per call, into preallocated buffers,
the median of ``repeats`` rounds (each round times both sides back to back, alternating
which goes first) after one untimed warm-up. ``*_gbps_<size>``: bytes per second of the
whole call; ``*_ms_<size>``: its duration; ``direct_vs_via_node_<size>``: the ratio of
the two medians. ``local_*``: the same get once A holds the blocks itself (what every
later read of them costs with ``server.cache_peer_reads``, the default): the client reads
A's shared arena.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass

import uvloop

from bench.common import parser, report
from bench.procs import Child, start_redis, start_strata
from kvstore.client.store_client import StoreClient
from kvstore.hashing import Namespace, prefix_keys
from kvstore.layout import BlockSpec, KVDtype
from kvstore.types import BlockKey, NamespaceId

SIZES = {"1m": 1 << 20, "4m": 4 << 20}


@dataclass(frozen=True, slots=True)
class PeerReadConfig:
    blocks_per_get: int = 8
    repeats: int = 15
    sizes: tuple[str, ...] = ("1m", "4m")
    seed: int = 0


QUICK = PeerReadConfig(repeats=5)


def _namespace(block_bytes: int) -> Namespace:
    # 2 layers x (k|v) x 16 tokens x 2 heads x head_dim fp16 = block_bytes
    head_dim = block_bytes // (2 * 2 * 16 * 2 * 2)
    spec = BlockSpec(
        num_layers=2, num_kv_heads=2, head_dim=head_dim, dtype=KVDtype.FLOAT16, block_tokens=16
    )
    assert spec.block_bytes == block_bytes
    return Namespace(f"peer-read-{block_bytes}", spec)


def _node(redis: Child, block_bytes: int, blocks: int, **extra: object) -> Child:
    return start_strata(
        block_bytes,
        4 * blocks * block_bytes,
        2 << 20,
        **{
            "metadata.backend": "redis",
            "metadata.redis_url": f"redis://127.0.0.1:{redis.port}/0",
            "server.cache_peer_reads": "false",
            **extra,
        },
    )


async def _published(client: StoreClient, ns: NamespaceId, keys: Sequence[BlockKey]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(p.num_blocks == len(keys) for p in await client.lookup(ns, keys)):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("node B's blocks never reached the global index")


async def _size(label: str, config: PeerReadConfig, redis: Child) -> dict[str, float]:
    size, count = SIZES[label], config.blocks_per_get
    namespace = _namespace(size)
    tokens = list(range(config.seed, config.seed + count * namespace.spec.block_tokens))
    keys = prefix_keys(namespace.id, tokens, namespace.spec.block_tokens)
    with (
        _node(redis, size, count) as a,
        _node(redis, size, count, **{"transfer.host_id": "b"}) as b,
    ):
        a_address, b_address = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
        async with (
            StoreClient(a_address, timeout_s=30) as client,
            StoreClient(b_address, timeout_s=30, shared_memory=False) as holder,
        ):
            ns = await client.register_namespace(namespace)
            await holder.register_namespace(namespace)
            await holder.put(ns, keys, [bytes([i % 251]) * size for i in range(count)])
            await _published(client, ns, keys)
            holders = {b_address: holder}
            buffers = [bytearray(size) for _ in keys]

            async def via_node() -> int:
                return (await client.get(ns, keys, buffers)).num_hits

            async def direct() -> int:
                best = (await client.lookup(ns, keys))[0]
                result = await holders[best.address].get(ns, keys, buffers, local_only=True)
                return result.num_hits

            sides = {"via_node": via_node, "direct": direct}
            results = await _compare(label, size * count, count, sides, config.repeats)
            # what later reads cost once A keeps a copy (server.cache_peer_reads, the default)
            await client.put(ns, keys, [bytes(b) for b in buffers])
            local = await _compare(label, size * count, count, {"local": via_node}, config.repeats)
            return results | local


async def _compare(
    label: str,
    num_bytes: int,
    count: int,
    sides: dict[str, Callable[[], Awaitable[int]]],
    repeats: int,
) -> dict[str, float]:
    for side in sides.values():  # warm-up: connections, allocator growth
        assert await side() == count
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            hits = await sides[name]()
            seconds[name].append(time.perf_counter() - start)
            assert hits == count, f"{name}: {hits} of {count} blocks"
    results: dict[str, float] = {}
    for name, times in seconds.items():
        median = statistics.median(times)
        results[f"{name}_gbps_{label}"] = round(num_bytes / median / 1e9, 3)
        results[f"{name}_ms_{label}"] = round(median * 1e3, 2)
    if "direct" in sides:
        results[f"direct_vs_via_node_{label}"] = round(
            results[f"direct_gbps_{label}"] / results[f"via_node_gbps_{label}"], 2
        )
    return results


async def run(config: PeerReadConfig) -> dict[str, float]:
    results: dict[str, float] = {}
    with start_redis() as redis:
        for label in config.sizes:
            results |= await _size(label, config, redis)
    return results


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    config = QUICK if args.quick else PeerReadConfig()
    config = PeerReadConfig(config.blocks_per_get, config.repeats, config.sizes, args.seed)
    results = uvloop.run(run(config))
    units = {k: "ms" if "_ms_" in k else "x" if "_vs_" in k else "GB/s" for k in results}
    report("peer_read", asdict(config), results, units=units, json_path=args.json)


if __name__ == "__main__":
    main()
