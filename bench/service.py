"""Strata's store service against Redis and the raw loopback: one client, large values.

Every server is a separate process on 127.0.0.1 (see ``bench.procs``); all figures are
GB/s (1e9 bytes/s) or µs, the median of ``repeats`` rounds after one untimed warm-up round
(allocator growth, TCP windows). Each round runs Redis then Strata on the same sizes, so
a VM's drift over seconds hits both alike. Per size (64k, 1m, 4m bytes per value/block):

* ``socket_gbps``: one TCP stream from a child process (``sendall`` of a 4 MiB buffer)
  into ``recv_into`` a preallocated buffer: the loopback's limit here.
* ``redis_{put,get}_gbps_<size>``: SET / GET of one value per command, sync redis-py,
  hiredis reply parser (its default, 64 KiB reads: larger reads measured slower), and the
  pure-Python command packer, which sends a large value as its own buffer (redis-py 8's
  default hiredis packer copies it into one command string: 5-8x slower SET at 1-4 MiB).
  asyncio redis-py measured the same on SET but 25-30% slower on GET, so sync it is.
  Server: ``--save "" --appendonly no``, ``proto-max-bulk-len`` 16 MiB.
* ``strata_{put,get}_gbps_<size>``: ``StoreClient.put`` / ``get`` of one block per call
  (like SET/GET), gets into a caller buffer; ``..._batch<B>``: ``batch_blocks`` blocks per
  call, as an engine sends them. The client moves bytes over the node's data plane: on
  this host, gets read the node's shared DRAM arena after one small round trip that pins
  the blocks; puts stream into reserved slots over the data plane's TCP.
  ``strata_grpc_{put,get}_gbps_<size>``: the same single-block calls with the data plane
  off (bytes in gRPC messages), for comparison. ``kvstore serve`` runs DRAM-only,
  ``store.block_bytes`` = size, ``server.chunk_bytes`` = the client's ``chunk_bytes``.
  Strata keys are new each round (removed after it); Redis keys are the same, so SET
  reuses warm memory.
* ``{redis,strata}_get_p50_us_1m`` / ``p99``: latency of single 1 MiB gets, round robin
  over a few resident keys. ``strata_get_vs_redis_<size>``: strata / redis get GB/s.

Target: ``strata_get_vs_redis_1m`` and ``_4m`` >= 1.5. The gRPC figures swing with glibc
malloc's dynamic mmap threshold (fresh, page-faulting 1 MiB buffers or reused ones), so
both the node (``server.tune_malloc``) and this client keep freed memory mapped
(``kvstore.malloc``); ``malloc_env`` records any ``MALLOC_*`` variables.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import grpc
import numpy as np
import redis
import uvloop
from google.protobuf import __version__ as protobuf_version
from redis._parsers import Encoder
from redis.connection import PythonRespSerializer

from bench.common import Target, parser, progress, report
from bench.procs import SocketPeer, start_redis, start_strata
from kvstore.client.calls import CallOptions
from kvstore.client.store_client import StoreClient
from kvstore.hashing import Namespace
from kvstore.layout import BlockSpec, KVDtype
from kvstore.malloc import keep_freed_memory
from kvstore.types import BlockKey, NamespaceId

KiB, MiB = 1 << 10, 1 << 20
SIZES = {"64k": 64 * KiB, "1m": MiB, "4m": 4 * MiB}
LAYER_BYTES = 2 * 256 * 1 * 64 * 2  # (K, V) x 256 tokens x 1 head x 64 dims x fp16
LATENCY_SIZE, LATENCY_KEYS = "1m", 16
REDIS_READ_BYTES = 64 * KiB  # hiredis recv_into buffer: the default; 256 KiB-4 MiB was slower

Tick = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class ServiceBenchConfig:
    sizes: tuple[str, ...] = ("64k", "1m", "4m")
    pass_bytes: int = 256 * MiB  # bytes moved per timed pass, per size and system
    socket_pass_bytes: int = 1024 * MiB
    batch_blocks: int = 16
    latency_samples: int = 1000
    repeats: int = 5
    chunk_bytes: int = (
        2 * MiB
    )  # client CallOptions.chunk_bytes and server.chunk_bytes (the defaults)
    seed: int = 0

    def keys_per_pass(self, label: str) -> int:
        return max(self.pass_bytes // SIZES[label], self.batch_blocks)


QUICK = ServiceBenchConfig(
    pass_bytes=64 * MiB, socket_pass_bytes=256 * MiB, latency_samples=300, repeats=3
)


def block_spec(block_bytes: int) -> BlockSpec:
    """A spec of exactly ``block_bytes``: whole 64 KiB layers."""
    if block_bytes % LAYER_BYTES:
        raise ValueError(f"block size {block_bytes} is not a multiple of {LAYER_BYTES}")
    return BlockSpec(block_bytes // LAYER_BYTES, 1, 64, KVDtype.FLOAT16, block_tokens=256)


def redis_client(port: int) -> redis.Redis:
    """Sync redis-py with the hiredis parser (its default) and the Python packer."""
    encoder = Encoder("utf-8", "strict", decode_responses=False)  # type: ignore[no-untyped-call]
    packer = PythonRespSerializer(6000, encoder.encode)  # 6000: redis-py's buffer cutoff
    pool = redis.ConnectionPool(
        host="127.0.0.1", port=port, socket_read_size=REDIS_READ_BYTES, command_packer=packer
    )
    return redis.Redis(connection_pool=pool)


def redis_settings(client: redis.Redis) -> dict[str, object]:
    """What the connection really uses (checked, not assumed)."""
    conn = client.connection_pool.get_connection()
    try:
        return {
            "redis_client": "sync",
            "redis_parser": type(conn._parser).__name__,
            "redis_packer": type(conn._command_packer).__name__,
            "redis_socket_read_bytes": REDIS_READ_BYTES,
            "redis_py": redis.__version__,
            "redis_server": client.info("server")["redis_version"],
        }
    finally:
        client.connection_pool.release(conn)


def redis_pass(client: redis.Redis, keys: list[bytes], value: bytes, *, put: bool) -> float:
    """SET (or GET) every key once, one command each; GB/s."""
    start = time.perf_counter()
    for key in keys:
        if put:
            client.set(key, value)
        elif len(client.get(key) or b"") != len(value):
            raise RuntimeError(f"redis GET {key!r}: wrong size")
    return _gbps(len(keys) * len(value), start)


async def strata_pass(
    client: StoreClient,
    ns_id: NamespaceId,
    keys: list[BlockKey],
    bufs: list[memoryview],
    *,
    put: bool,
) -> float:
    """Put (or get into ``bufs``) every key, ``len(bufs)`` blocks per call; GB/s."""
    step = len(bufs)
    start = time.perf_counter()
    for i in range(0, len(keys), step):
        batch = keys[i : i + step]
        if put:
            done = (await client.put(ns_id, batch, bufs[: len(batch)])).num_stored
        else:
            done = (await client.get(ns_id, batch, bufs)).num_hits
        if done != len(batch):
            raise RuntimeError(f"{'put stored' if put else 'get hit'} {done} of {len(batch)}")
    return _gbps(len(keys) * bufs[0].nbytes, start)


async def measure_size(
    config: ServiceBenchConfig, label: str, redis_db: redis.Redis, tick: Tick
) -> dict[str, float]:
    """Rounds of Redis SET/GET, then Strata single and batched put/get, at one size."""
    size = SIZES[label]
    rng = np.random.default_rng(config.seed)
    value = rng.bytes(size)
    blocks = [memoryview(bytearray(value)) for _ in range(config.batch_blocks)]
    num_keys = config.keys_per_pass(label)
    capacity = (num_keys + config.batch_blocks + LATENCY_KEYS) * size
    redis_keys = [b"bench-%d" % i for i in range(num_keys)]  # SET overwrites: warm memory
    samples: dict[str, list[float]] = defaultdict(list)
    with start_strata(size, capacity, config.chunk_bytes) as server:
        options = CallOptions(chunk_bytes=config.chunk_bytes, timeout_s=60.0)
        grpc_options = replace(options, data_plane=False)
        address = f"127.0.0.1:{server.port}"
        async with (
            StoreClient(address, options) as client,
            StoreClient(address, grpc_options) as grpc_client,
        ):
            ns_id = await client.register_namespace(Namespace("bench", block_spec(size)))
            await grpc_client.register_namespace(Namespace("bench", block_spec(size)))
            for _ in range(config.repeats + 1):
                keys = [BlockKey(rng.bytes(16)) for _ in range(num_keys)]
                for op in ("put", "get"):
                    figure = redis_pass(redis_db, redis_keys, value, put=op == "put")
                    samples[f"redis_{op}_gbps_{label}"].append(figure)
                    tick(1)
                variants = (
                    ("strata", client, "", blocks[:1]),
                    ("strata", client, f"_batch{len(blocks)}", blocks),
                    ("strata_grpc", grpc_client, "", blocks[:1]),
                )
                for name, user, suffix, bufs in variants:
                    for op in ("put", "get"):
                        figure = await strata_pass(user, ns_id, keys, bufs, put=op == "put")
                        samples[f"{name}_{op}_gbps_{label}{suffix}"].append(figure)
                        tick(1)
                    await client.remove(ns_id, keys)
            figures = {name: _median_after_warmup(values) for name, values in samples.items()}
            if label == LATENCY_SIZE:
                figures.update(await measure_latency(config, client, ns_id, redis_db, value))
    redis_db.flushall()
    return figures


async def measure_latency(
    config: ServiceBenchConfig,
    client: StoreClient,
    ns_id: NamespaceId,
    redis_db: redis.Redis,
    value: bytes,
) -> dict[str, float]:
    """Single-get latencies (µs), round robin over ``LATENCY_KEYS`` resident keys."""
    rng = np.random.default_rng(config.seed + 1)  # keys apart from the passes' keys
    keys = [BlockKey(rng.bytes(16)) for _ in range(LATENCY_KEYS)]
    block = memoryview(bytearray(value))
    for key in keys:
        redis_db.set(key, value)
        await client.put(ns_id, [key], [block])
    laps = config.latency_samples + LATENCY_KEYS  # the first lap over the keys warms up
    redis_us = [_elapsed_us(redis_db.get, keys[i % len(keys)]) for i in range(laps)]
    strata_us = []
    for i in range(laps):
        start = time.perf_counter()
        if (await client.get(ns_id, [keys[i % len(keys)]], [block])).num_hits != 1:
            raise RuntimeError("strata get missed a resident key")
        strata_us.append((time.perf_counter() - start) * 1e6)
    redis_db.delete(*keys)
    await client.remove(ns_id, keys)
    return {
        f"{name}_get_p{q}_us_{LATENCY_SIZE}": float(np.percentile(values[LATENCY_KEYS:], q))
        for name, values in (("redis", redis_us), ("strata", strata_us))
        for q in (50, 99)
    }


async def run(config: ServiceBenchConfig) -> tuple[dict[str, float], dict[str, object]]:
    """Every figure of this benchmark, and the settings found on the way."""
    num_passes = (config.repeats + 1) * (1 + 8 * len(config.sizes))
    results: dict[str, float] = {}
    with SocketPeer() as peer, start_redis() as redis_server, progress() as bar:
        task = bar.add_task("service", total=num_passes)
        tick: Tick = functools.partial(bar.advance, task)
        socket_gbps = []
        for _ in range(config.repeats + 1):
            socket_gbps.append(peer.gbps(config.socket_pass_bytes))
            tick(1)
        results["socket_gbps"] = _median_after_warmup(socket_gbps)
        redis_db = redis_client(redis_server.port)
        try:
            settings = redis_settings(redis_db)
            for label in config.sizes:
                results.update(await measure_size(config, label, redis_db, tick))
        finally:
            redis_db.close()
    for label in config.sizes:
        if label != "64k":
            ratio = results[f"strata_get_gbps_{label}"] / results[f"redis_get_gbps_{label}"]
            results[f"strata_get_vs_redis_{label}"] = ratio
    return results, settings


def main(argv: list[str] | None = None, config: ServiceBenchConfig | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--chunk-bytes", type=int, default=None, help="gRPC data message size")
    args = p.parse_args(argv)
    config = config or (QUICK if args.quick else ServiceBenchConfig())
    config = replace(config, seed=args.seed, chunk_bytes=args.chunk_bytes or config.chunk_bytes)
    client_malloc_tuned = keep_freed_memory()  # as `kvstore serve` does (server.tune_malloc)
    results, settings = uvloop.run(run(config))  # the event loop Strata's processes use
    settings["client_malloc_tuned"] = client_malloc_tuned
    keys = {label: config.keys_per_pass(label) for label in config.sizes}
    shown = {**asdict(config), "keys_per_pass": keys, **settings, **_versions()}
    units = {k: "µs" if "_us_" in k else "x" if "_vs_" in k else "GB/s" for k in results}
    targets = {
        f"strata_get_vs_redis_{label}": Target(1.5)
        for label in ("1m", "4m")
        if f"strata_get_vs_redis_{label}" in results
    }
    report("service", shown, results, units=units, targets=targets, json_path=args.json)


def _versions() -> dict[str, object]:
    malloc_env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    return {
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "protobuf": protobuf_version,
        "cpus": os.cpu_count(),
        "malloc_env": malloc_env or "default",
    }


def _elapsed_us(fn: Callable[[bytes], object], arg: bytes) -> float:
    start = time.perf_counter()
    fn(arg)
    return (time.perf_counter() - start) * 1e6


def _median_after_warmup(values: list[float]) -> float:
    return float(np.median(values[1:]))


def _gbps(num_bytes: int, start: float) -> float:
    return num_bytes / (time.perf_counter() - start) / 1e9


if __name__ == "__main__":
    main()
