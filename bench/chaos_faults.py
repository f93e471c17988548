"""The chaos harness's faults: each breaks something under load and measures the damage.

Every fault runs the same three phases under load: ``pre_s`` of normal service, the
fault for ``during_s`` (then healed: a restart, Redis back, space freed, the link up
again), then ``after_s`` to recover. Figures count the requests that *ended* from the
fault on (``FaultResult``): ok / retried / recomputed / failed, wrong bytes (must be 0),
time to detect (fault -> first request that felt it), time to recover (fault -> last
request that felt it), and the growth of resident memory and open fds of the processes
that lived through it. A fault the sandbox cannot stage is reported, not faked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.chaos_env import NetnsPair, SlowDisk, Tmpfs, Usage, proc_usage
from bench.chaos_load import EngineLoad, Outcome, StoreLoad, Tally, drive
from bench.chaos_stacks import MODEL, NAMESPACE, SPEC, StoreStack, UpStack
from bench.procs import KVSTORE
from engine.launch import Child
from kvstore.client import ClusterClient, StoreClient
from kvstore.client.calls import CallOptions
from kvstore.transfer.frames import HEADER

MiB = 1 << 20
HEALTHY_TIMEOUT_S = 180.0


@dataclass(frozen=True, slots=True)
class Phases:
    pre_s: float
    during_s: float
    after_s: float


QUICK = Phases(pre_s=3, during_s=4, after_s=8)
FULL = Phases(pre_s=10, during_s=20, after_s=40)


@dataclass(frozen=True, slots=True)
class FaultResult:
    fault: str
    ok: int
    retried: int
    recomputed: int
    failed: int
    wrong: int
    detect_s: float | None
    recover_s: float | None
    rss_growth_mib: float
    fd_growth: int
    p99_before_ms: float = 0.0  # latency of answered requests before the fault
    p99_during_ms: float = 0.0  # ... and from the fault until it was healed
    note: str = ""


def skipped(fault: str, why: str) -> FaultResult:
    return FaultResult(fault, 0, 0, 0, 0, 0, None, None, 0.0, 0, f"not run: {why}")


def _usage(pids: list[int]) -> Usage:
    found = [u for u in map(proc_usage, pids) if u is not None]
    return Usage(sum(u.rss_bytes for u in found), sum(u.num_fds for u in found))


async def run_fault(
    fault: str,
    loads: list[tuple[Callable[[], object], int]],
    *,
    tally: Callable[[], Tally],
    inject: Callable[[], object],
    heal: Callable[[], object],
    phases: Phases,
    survivors: Callable[[], list[int]],
) -> FaultResult:
    """Drive ``loads`` (``one`` callables and their concurrency) through the phases."""
    stop = asyncio.Event()
    drivers = [
        asyncio.create_task(drive(one, stop.is_set, concurrency=n))  # type: ignore[arg-type]
        for one, n in loads
    ]
    before = _usage(survivors())
    await asyncio.sleep(phases.pre_s)
    fault_s = time.monotonic()
    await asyncio.to_thread(inject)
    await asyncio.sleep(max(0.0, fault_s + phases.during_s - time.monotonic()))
    heal_s = time.monotonic()
    await asyncio.to_thread(heal)
    await asyncio.sleep(phases.after_s)
    stop.set()
    await asyncio.gather(*drivers)
    after = _usage(survivors())
    window = tally().window(fault_s)
    counts = window.counts()
    tail = tally().window(time.monotonic() - 3.0).counts()
    note = "still failing at the end" if tail["failed"] and tail["failed"] >= tail["ok"] else ""
    return FaultResult(
        fault,
        counts["ok"],
        counts["retried"],
        counts["recomputed"],
        counts["failed"],
        window.wrong,
        window.detect_s(fault_s),
        window.recover_s(fault_s),
        (after.rss_bytes - before.rss_bytes) / MiB,
        after.num_fds - before.num_fds,
        tally().window(fault_s - phases.pre_s, fault_s).latency_ms(0.99),
        tally().window(fault_s, heal_s).latency_ms(0.99),
        note,
    )


def _store_load(client: object, seed: int, num_chains: int = 48) -> StoreLoad:
    return StoreLoad(
        client,  # type: ignore[arg-type]
        NAMESPACE.id,
        block_bytes=SPEC.block_bytes,
        block_tokens=SPEC.block_tokens,
        num_chains=num_chains,
        chain_blocks=4,
        seed=seed,
    )


async def store_node_kill(phases: Phases) -> FaultResult:
    with StoreStack(2) as stack:
        async with ClusterClient(stack.redis_url, CallOptions(timeout_s=2), refresh_s=0.5) as c:
            await c.register_namespace(NAMESPACE)
            load = _store_load(c, seed=1)
            return await run_fault(
                "kill -9 store node",
                [(load.one, 4)],
                tally=lambda: load.tally,
                inject=lambda: stack.kill_node(1),
                heal=lambda: stack.restart_node(1),
                phases=phases,
                survivors=lambda: [stack.nodes[0].proc.pid],
            )


async def redis_kill(phases: Phases) -> FaultResult:
    with StoreStack(2) as stack:
        async with ClusterClient(stack.redis_url, CallOptions(timeout_s=2), refresh_s=0.5) as c:
            await c.register_namespace(NAMESPACE)
            load = _store_load(c, seed=2)
            return await run_fault(
                "kill -9 Redis",
                [(load.one, 4)],
                tally=lambda: load.tally,
                inject=stack.kill_redis,
                heal=stack.restart_redis,
                phases=phases,
                survivors=lambda: [n.proc.pid for n in stack.nodes],
            )


def _nvme_flags(path: Path, capacity_bytes: int) -> dict[str, object]:
    return {
        "tiers.nvme.enabled": "true",
        "tiers.nvme.path": str(path),
        "tiers.nvme.capacity_bytes": capacity_bytes,
        "tiers.nvme.slab_bytes": 8 * MiB,
    }


async def _single_node_fault(
    fault: str, phases: Phases, stack: StoreStack, *, inject: Callable[[], object],
    heal: Callable[[], object], seed: int,
) -> FaultResult:  # fmt: skip
    async with StoreClient(stack.address(0), CallOptions(timeout_s=2)) as client:
        await client.register_namespace(NAMESPACE)
        load = _store_load(client, seed=seed, num_chains=96)  # 24 MiB: most on NVMe
        return await run_fault(
            fault,
            [(load.one, 4)],
            tally=lambda: load.tally,
            inject=inject,
            heal=heal,
            phases=phases,
            survivors=lambda: [stack.nodes[0].proc.pid],
        )


async def full_disk(phases: Phases) -> FaultResult:
    with Tmpfs(64 * MiB) as disk:
        flags = _nvme_flags(disk.path / "nvme", 40 * MiB)
        with StoreStack(1, redis=False, dram_bytes=4 * MiB, **flags) as stack:
            return await _single_node_fault(
                "full disk (64 MiB tmpfs)", phases, stack, inject=disk.fill, heal=disk.free, seed=3
            )


async def slow_disk(phases: Phases) -> FaultResult:
    with SlowDisk(256 * MiB, bytes_per_s=1 * MiB, iops=50) as disk:
        flags = {**_nvme_flags(disk.path / "nvme", 64 * MiB), "tiers.nvme.direct_io": "true"}
        with StoreStack(1, redis=False, dram_bytes=4 * MiB, **flags) as stack:
            disk.add(stack.nodes[0].proc.pid)
            result = await _single_node_fault(
                "slow disk (1 MiB/s, 50 IOPS)",
                phases,
                stack,
                inject=lambda: disk.throttle(True),
                heal=lambda: disk.throttle(False),
                seed=4,
            )
            return _with_note(result, f"{disk.num_ios()} disk I/Os seen by the throttle")


async def engine_faults(phases: Phases) -> list[FaultResult]:
    """kill -9 of the prefill worker, of the decode worker, then hostile frames on every
    port, all on one ``kvengine up``."""
    with UpStack() as stack:
        load = EngineLoad(stack.url, MODEL)
        try:
            for _ in range(2):  # references and cached prefixes before any fault
                for _ in load.prompts:
                    await load.one()
            results = []
            for role in ("prefill", "decode"):
                results.append(await _kill_worker(stack, load, role, phases))
            results.append(await _hostile(stack, load, phases))
            return results
        finally:
            await load.close()


async def _kill_worker(stack: UpStack, load: EngineLoad, role: str, phases: Phases) -> FaultResult:
    load.tally = Tally()
    victim = stack.pid_of(role) or 0
    times: dict[str, float | None] = {}

    def kill() -> None:
        times["killed"] = time.monotonic()
        os.kill(victim, signal.SIGKILL)

    def wait_healthy() -> None:  # the supervisor restarts it; the router sees it
        times["healthy"] = stack.wait_healthy(HEALTHY_TIMEOUT_S)

    result = await run_fault(
        f"kill -9 {role} worker",
        [(load.one, 2)],
        tally=lambda: load.tally,
        inject=kill,
        heal=wait_healthy,
        phases=phases,
        survivors=lambda: [
            stack.child.proc.pid,
            *[p for r in ("store",) if (p := stack.pid_of(r))],
        ],
    )
    killed, healthy = times.get("killed"), times.get("healthy")
    note = (
        f"serving again {healthy - killed:.1f} s after the kill"
        if healthy is not None and killed is not None
        else f"not serving {HEALTHY_TIMEOUT_S:.0f} s after the kill"
    )
    return _with_note(result, note)


def _with_note(result: FaultResult, note: str) -> FaultResult:
    return dataclasses.replace(result, note="; ".join(n for n in (note, result.note) if n))


def _hostile_payloads(rng: random.Random) -> list[bytes]:
    return [
        rng.randbytes(4096),  # noise
        HEADER.pack(b"SD", 1, 0, 1, 64 * MiB),  # a data-plane frame declaring 64 MiB
        HEADER.pack(b"SD", 3, 0, 2, 40) + rng.randbytes(40),  # a READ_RANGES of junk
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + rng.randbytes(512),  # HTTP/2 preface, junk frames
        b"GET /" + b"A" * 8192 + b" HTTP/1.1\r\n",  # an unterminated request line
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n{",  # a lie
    ]


async def _send_hostile(port: int, payload: bytes) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    except (OSError, TimeoutError):
        return
    try:
        writer.write(payload)
        await asyncio.wait_for(writer.drain(), 2)
        await asyncio.wait_for(reader.read(1024), 0.5)
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


async def _hostile(stack: UpStack, load: EngineLoad, phases: Phases) -> FaultResult:
    load.tally = Tally()
    rng = random.Random(13)
    sent = [0]
    until = [0.0]

    def start() -> None:
        until[0] = time.monotonic() + phases.during_s

    async def attack() -> None:  # at most 4 hostile connections at once
        while time.monotonic() < until[0] or not until[0]:
            if not until[0]:
                await asyncio.sleep(0.05)
                continue
            batch = [(port, p) for port in stack.ports.values() for p in _hostile_payloads(rng)]
            for i in range(0, len(batch), 4):
                await asyncio.gather(*(_send_hostile(port, p) for port, p in batch[i : i + 4]))
                sent[0] += len(batch[i : i + 4])

    attacker = asyncio.create_task(attack())
    try:
        result = await run_fault(
            f"hostile frames on {len(stack.ports)} ports",
            [(load.one, 2)],
            tally=lambda: load.tally,
            inject=start,
            heal=lambda: None,
            phases=phases,
            survivors=lambda: (
                [p for r in ("store", "prefill", "decode") if (p := stack.pid_of(r))]
                + [stack.child.proc.pid]
            ),
        )
    finally:
        attacker.cancel()
    return _with_note(result, f"{sent[0]} hostile connections")


async def link_cut(phases: Phases) -> FaultResult:
    """Two "hosts" (network namespaces joined by veth): Redis and node 0 on host a,
    node 1 on host b; the load runs on host a. The link is cut, then restored."""
    with NetnsPair() as net:
        procs: list[Child] = []
        try:
            redis_port = 6390
            ip_a, ip_b = net.address(net.a), net.address(net.b)
            args = ["redis-server", "--port", str(redis_port), "--bind", ip_a,
                    "--protected-mode", "no", "--save", "", "--appendonly", "no"]  # fmt: skip
            redis = Child("redis", [*net.prefix(net.a), *args])
            procs.append(redis)
            redis.wait_for_line("Ready to accept", 10)
            url = f"redis://{ip_a}:{redis_port}/0"
            for i, (ns, ip) in enumerate(((net.a, ip_a), (net.b, ip_b))):
                procs.append(_netns_node(net, ns, ip, url, i))
            events = await _load_in(net, url, phases)
            return _from_events("cut link between two hosts", events, phases, procs[1:])
        finally:
            for child in procs:
                child.stop()


def _netns_node(net: NetnsPair, ns: str, ip: str, url: str, i: int) -> Child:
    flags = {
        "store.node_id": f"host-{i}", "store.block_bytes": SPEC.block_bytes,
        "tiers.dram.capacity_bytes": 32 * MiB, "server.host": ip, "server.port": 7700,
        "server.metrics_enabled": "false", "transfer.port": 0,
        "metadata.backend": "redis", "metadata.redis_url": url, "metadata.node_ttl_s": 2,
        "metadata.heartbeat_interval_s": 0.5, "server.peer_timeout_s": 2, "server.grace_s": 1,
        "transfer.host_id": f"host-{i}",  # two hosts: no shared memory between them
    }  # fmt: skip
    args = [*net.prefix(ns), *KVSTORE, "serve", "--log-level", "WARNING"]
    args += [part for key, value in flags.items() for part in (f"--{key}", str(value))]
    child = Child(f"node-{i}", args, port=7700)
    child.wait_for_line("serving on", 30)
    return child


async def _load_in(net: NetnsPair, url: str, phases: Phases) -> dict[str, object]:
    """Run the store load inside host a (this module's ``__main__``) while this process
    cuts and heals the link; returns its events and the fault's times."""
    total_s = phases.pre_s + phases.during_s + phases.after_s
    out = Path(f"/tmp/strata-chaos-load-{os.getpid()}.json")
    args = [
        *net.prefix(net.a),
        sys.executable,
        "-m",
        "bench.chaos_faults",
        url,
        str(total_s),
        str(out),
    ]
    proc = await asyncio.create_subprocess_exec(*args, cwd=Path(__file__).parents[1])
    try:
        await asyncio.sleep(phases.pre_s + 1.0)  # the load connects first
        fault_s = time.monotonic()
        await asyncio.to_thread(net.cut)
        await asyncio.sleep(phases.during_s)
        await asyncio.to_thread(net.heal)
        await asyncio.wait_for(proc.wait(), total_s + 60)
        data: dict[str, object] = json.loads(out.read_text())
        data["fault_s"] = fault_s
        return data
    finally:
        if proc.returncode is None:
            proc.kill()
        out.unlink(missing_ok=True)


def _from_events(
    fault: str, data: dict[str, object], phases: Phases, nodes: list[Child]
) -> FaultResult:
    tally = Tally()
    tally.events = [(t, Outcome(o), lat) for t, o, lat in data["events"]]  # type: ignore[attr-defined]
    tally.errors = list(data["errors"])  # type: ignore[call-overload]
    tally.wrong = int(data["wrong"])  # type: ignore[call-overload]
    fault_s = float(data["fault_s"])  # type: ignore[arg-type]
    window = tally.window(fault_s)
    counts = window.counts()
    return FaultResult(
        fault, counts["ok"], counts["retried"], counts["recomputed"], counts["failed"],
        window.wrong, window.detect_s(fault_s), window.recover_s(fault_s), 0.0, 0,
        tally.window(fault_s - phases.pre_s, fault_s).latency_ms(0.99),
        tally.window(fault_s, fault_s + phases.during_s).latency_ms(0.99),
        "RSS/fds not sampled across namespaces",
    )  # fmt: skip


async def _load_main(url: str, seconds: float, out: Path) -> None:
    end = time.monotonic() + seconds
    async with ClusterClient(url, CallOptions(timeout_s=2), refresh_s=0.5) as client:
        await client.register_namespace(NAMESPACE)
        load = _store_load(client, seed=5)
        await drive(load.one, lambda: time.monotonic() > end, concurrency=4)
    events = [(t, o.value, lat) for t, o, lat in load.tally.events]
    payload = {"events": events, "errors": load.tally.errors, "wrong": load.tally.wrong}
    out.write_text(json.dumps(payload))


if __name__ == "__main__":  # the load half of ``link_cut``, run inside a namespace
    asyncio.run(_load_main(sys.argv[1], float(sys.argv[2]), Path(sys.argv[3])))
