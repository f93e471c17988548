"""The transfer engine against the physical limits: loopback TCP and memory copies.

Every figure reads a batch of ``batch_blocks`` (64) blocks from a store node running in
another process (``kvstore serve``) into one client buffer, with the engine a client or
a peer node uses (checksums verified on arrival), and is the median of several rounds:

* ``memcpy_gbps``: one copy of the 4m batch's total bytes between two preallocated
  buffers (numpy): the limit for ``shm``.
* ``socket_gbps``: one TCP stream between two processes (``bench.procs``): the limit for
  ``tcp``.
* ``tcp_gbps_<size>``: the data plane over TCP, as from another host (the engine is given
  another host id, so it cannot use shared memory); ``tcp_tls_gbps_4m`` with TLS on.
* ``shm_gbps_<size>``: the same reads through the node's shared DRAM arena.
* ``tcp_p50_us_64k`` / ``tcp_p99_us_64k``: one 64 KiB block per request over TCP.
* ``layerwise_overlap``: a producer "computes" 32 layers (a fixed sleep per layer, off the
  event loop) and submits each layer's write to the node as soon as it is done; the
  fraction of the transfer time hidden behind compute is
  1 - (total - compute) / transfer-alone.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import uvloop

from bench.common import Target, parser, progress, report
from bench.procs import SocketPeer, start_strata
from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.hashing import Namespace
from kvstore.layout import BlockSpec, KVDtype
from kvstore.malloc import keep_freed_memory
from kvstore.transfer.connection import local_host_id
from kvstore.transfer.engine import Peer, TransferEngine
from kvstore.transfer.transports import RangeWrite

KiB, MiB = 1 << 10, 1 << 20
# Block specs giving exactly 64 KiB, 1 MiB and 4 MiB (fp16, 64 tokens a block).
SPECS = {
    "64k": BlockSpec(1, 2, 128, KVDtype.FLOAT16, 64),
    "1m": BlockSpec(16, 2, 128, KVDtype.FLOAT16, 64),
    "4m": BlockSpec(32, 4, 128, KVDtype.FLOAT16, 64),
}
OTHER_HOST = "bench-other-host"  # an engine with this host id must use TCP


@dataclass(frozen=True)
class TransferBenchConfig:
    sizes: tuple[str, ...] = ("64k", "1m", "4m")
    batch_blocks: int = 64
    rounds: int = 7
    latency_samples: int = 400
    layers: int = 32
    layer_bytes: int = MiB
    compute_ms_per_layer: float = 2.0
    stripes: int = 4
    tls: bool = True


QUICK = TransferBenchConfig(rounds=4, latency_samples=200)


async def median_gbps(num_bytes: int, rounds: int, once: Callable[[], Awaitable[object]]) -> float:
    await once()  # warm-up: connections, page faults
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        await once()
        times.append(time.perf_counter() - start)
    return num_bytes / statistics.median(times) / 1e9


def memcpy_gbps(num_bytes: int, rounds: int) -> float:
    src, dst = np.ones(num_bytes, np.uint8), np.empty(num_bytes, np.uint8)
    np.copyto(dst, src)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return num_bytes / statistics.median(times) / 1e9


async def filled_node(label: str, config: TransferBenchConfig, **flags: object):  # type: ignore[no-untyped-def]
    """A node holding ``batch_blocks`` blocks of size ``label``; returns (child, ns, keys,
    data addresses)."""
    spec = SPECS[label]
    size = spec.block_bytes
    child = start_strata(size, (config.batch_blocks + 8) * size, 2 * MiB, **flags)
    options = CallOptions(tls_ca_file=flags.get("tls.cert_file"), timeout_s=60)  # type: ignore[arg-type]
    address = f"{flags.get('server.host', '127.0.0.1')}:{child.port}"
    async with StoreClient(address, options) as client:
        ns = await client.register_namespace(Namespace(f"bench-{label}", spec))
        keys = [i.to_bytes(16, "little") for i in range(config.batch_blocks)]
        for i in range(0, len(keys), 16):
            await client.put(
                ns, keys[i : i + 16], [bytes([i % 251]) * size] * len(keys[i : i + 16])
            )  # type: ignore[arg-type]
        route = await client.data_plane()
        assert route is not None, "the node has no data plane"
        return child, ns, keys, route.peer.addresses


async def measure_size(label: str, config: TransferBenchConfig, results: dict[str, float]) -> None:
    size = SPECS[label].block_bytes
    child, ns, keys, addresses = await filled_node(label, config)
    try:
        dsts = [memoryview(bytearray(size)) for _ in keys]
        for name, host_id in (("tcp", OTHER_HOST), ("shm", local_host_id())):
            engine = TransferEngine(host_id=host_id, stripes=config.stripes, timeout_s=60)
            try:
                peer = await engine.connect(addresses)
                assert peer.kind.value == name, f"expected {name}, got {peer.kind.value}"

                async def read(peer: Peer = peer) -> None:
                    got = await peer.transport.read_blocks(ns, keys, dsts)
                    assert got.num_hits == len(keys)

                results[f"{name}_gbps_{label}"] = await median_gbps(
                    size * len(keys), config.rounds, read
                )
                if name == "tcp" and label == "64k":
                    await latencies(peer, ns, keys, dsts, config=config, results=results)
            finally:
                await engine.close()
    finally:
        child.stop()


async def latencies(  # type: ignore[no-untyped-def]
    peer: Peer, ns, keys, dsts, *, config: TransferBenchConfig, results: dict[str, float]
) -> None:  # type: ignore[no-untyped-def]
    samples = []
    for i in range(config.latency_samples):
        start = time.perf_counter()
        await peer.transport.read_blocks(ns, keys[i % len(keys) : i % len(keys) + 1], dsts[:1])
        samples.append((time.perf_counter() - start) * 1e6)
    results["tcp_p50_us_64k"] = float(np.percentile(samples, 50))
    results["tcp_p99_us_64k"] = float(np.percentile(samples, 99))


async def measure_tls(config: TransferBenchConfig, results: dict[str, float]) -> None:
    import ssl

    from tests.certs import self_signed

    with tempfile.TemporaryDirectory() as tmp:
        cert = self_signed(Path(tmp))
        flags = {
            "tls.enabled": "true",
            "tls.cert_file": cert.cert,
            "tls.key_file": cert.key,
            "transfer.tls": "true",
            "server.host": "localhost",
        }
        child, ns, keys, addresses = await filled_node("4m", config, **flags)
        try:
            context = ssl.create_default_context(cafile=str(cert.cert))
            engine = TransferEngine(
                host_id=OTHER_HOST, ssl_context=context, stripes=config.stripes, timeout_s=60
            )
            try:
                peer = await engine.connect(addresses)
                size = SPECS["4m"].block_bytes
                dsts = [memoryview(bytearray(size)) for _ in keys]

                async def read() -> None:
                    await peer.transport.read_blocks(ns, keys, dsts)

                results["tcp_tls_gbps_4m"] = await median_gbps(
                    size * len(keys), config.rounds, read
                )
            finally:
                await engine.close()
        finally:
            child.stop()


async def measure_layerwise(config: TransferBenchConfig, results: dict[str, float]) -> None:
    """Write 32 layers into the node's ``probe`` segment, alone and behind compute."""
    total = config.layers * config.layer_bytes
    child = start_strata(MiB, 64 * MiB, 2 * MiB, **{"transfer.probe_bytes": total})
    engine = TransferEngine(host_id=OTHER_HOST, stripes=config.stripes, timeout_s=60)
    try:
        async with StoreClient(f"127.0.0.1:{child.port}") as client:
            route = await client.data_plane()
            assert route is not None
            addresses = route.peer.addresses
        peer = await engine.connect(addresses)
        layers = [memoryview(bytes([i]) * config.layer_bytes) for i in range(config.layers)]
        compute_s = config.compute_ms_per_layer / 1000
        transfer_ids = itertools.count(1)

        def writes(i: int) -> list[RangeWrite]:
            return [RangeWrite("probe", i * config.layer_bytes, layers[i])]

        def submit(transfer_id: int, i: int) -> asyncio.Task[None]:
            """Layer i's writes, started now (as the prefill worker's hand-off does)."""
            return asyncio.create_task(peer.transport.write_ranges(transfer_id, i, writes(i)))

        async def transfer_alone() -> float:
            transfer_id = next(transfer_ids)
            start = time.perf_counter()
            await asyncio.gather(*(submit(transfer_id, i) for i in range(config.layers)))
            return time.perf_counter() - start

        async def with_compute(transfer: bool = True) -> float:
            transfer_id, layers_sent = next(transfer_ids), []
            start = time.perf_counter()
            for i in range(config.layers):
                await asyncio.to_thread(time.sleep, compute_s)  # layer i's compute
                if transfer:
                    layers_sent.append(submit(transfer_id, i))  # overlaps layer i + 1's
            await asyncio.gather(*layers_sent)
            return time.perf_counter() - start

        await transfer_alone()
        transfer = statistics.median([await transfer_alone() for _ in range(config.rounds)])
        # The compute loop's own cost (the sleeps and their thread hops), measured alone.
        compute = statistics.median([await with_compute(False) for _ in range(config.rounds)])
        total_time = statistics.median([await with_compute() for _ in range(config.rounds)])
        results["layerwise_transfer_ms"] = transfer * 1e3
        results["layerwise_compute_ms"] = compute * 1e3
        results["layerwise_total_ms"] = total_time * 1e3
        results["layerwise_overlap"] = max(0.0, 1 - max(0.0, total_time - compute) / transfer)
    finally:
        await engine.close()
        child.stop()


async def run(config: TransferBenchConfig) -> dict[str, float]:
    results: dict[str, float] = {}
    batch_4m = config.batch_blocks * SPECS["4m"].block_bytes
    results["memcpy_gbps"] = memcpy_gbps(batch_4m, config.rounds)
    with SocketPeer() as peer:
        peer.gbps(256 * MiB)
        results["socket_gbps"] = statistics.median(
            peer.gbps(256 * MiB) for _ in range(config.rounds)
        )
    steps = [*config.sizes, "tls", "layerwise"] if config.tls else [*config.sizes, "layerwise"]
    with progress() as bar:
        task = bar.add_task("transfer", total=len(steps))
        for step in steps:
            if step == "tls":
                await measure_tls(config, results)
            elif step == "layerwise":
                await measure_layerwise(config, results)
            else:
                await measure_size(step, config, results)
            bar.advance(task)
    return results


def plot(results: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [s for s in SPECS if f"tcp_gbps_{s}" in results]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(sizes))
    ax.bar(x - 0.2, [results[f"tcp_gbps_{s}"] for s in sizes], 0.4, label="tcp")
    ax.bar(x + 0.2, [results[f"shm_gbps_{s}"] for s in sizes], 0.4, label="shm")
    ax.axhline(results["socket_gbps"], color="C0", linestyle="--", label="one TCP stream")
    ax.axhline(results["memcpy_gbps"], color="C1", linestyle=":", label="memcpy")
    ax.set_xticks(x, [f"{s} blocks" for s in sizes])
    ax.set_ylabel("GB/s (batch of 64 blocks)")
    ax.set_title("transfer engine: reads from a store node in another process")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


TARGETS = {
    "tcp_gbps_4m": Target(0.8, "socket_gbps"),
    "shm_gbps_4m": Target(0.5, "memcpy_gbps"),
    "layerwise_overlap": Target(0.8),
}


def main(argv: list[str] | None = None, config: TransferBenchConfig | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --json)")
    args = p.parse_args(argv)
    config = config or (QUICK if args.quick else TransferBenchConfig())
    keep_freed_memory()
    results = uvloop.run(run(config))
    targets = {k: t for k, t in TARGETS.items() if k in results}
    units = {
        k: "µs"
        if "_us_" in k
        else "ms"
        if k.endswith("_ms")
        else ""
        if k == "layerwise_overlap"
        else "GB/s"
        for k in results
    }
    shown = {**asdict(replace(config)), "quick": args.quick}
    report("transfer", shown, results, units=units, targets=targets, json_path=args.json)
    path = args.plot or (args.json.with_suffix(".png") if args.json else None)
    if path is not None and "socket_gbps" in results and "tcp_gbps_4m" in results:
        plot(results, path)


if __name__ == "__main__":
    main()
