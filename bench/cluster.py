"""The router's end-to-end rig: a local disaggregated cluster as child processes, and
the replay of timed requests through a router on it.

Layout (every process on 127.0.0.1, free ports)::

    redis-server  <-- metadata (global block index, node registry) --+
                                                                     |
    kvstore serve "bench-node-0"  <-- kvengine prefill (core 0)  ----+
    kvstore serve "bench-node-1"  <-- kvengine prefill (core 1)  ----+
                                        |  KV over the data plane
                                        v
                                  kvengine decode (any core)

Each prefill worker reads and writes its own store node; a node that misses a block
another node holds fetches it from that peer (``server.peer_fetch``) and keeps a copy.
With ``pin``, prefill worker ``i`` runs on core ``i mod cores`` (all its threads); the
decode worker, the store nodes, Redis and the bench process are not pinned. Workers run
with ``engine.prefix_caching false``: prompts reuse KV only through the store.

Invariants: no child outlives the ``LocalCluster`` (each is an ``engine.launch.Child``,
stopped in ``close``, which ``with`` calls in ``finally``, and started under a
parent-death signal). Readiness is observed: Redis answers PING, a node logs "serving
on", a worker prints its JSON line. ``flush`` returns only once every node's DRAM tier
and its entries in the global index are empty.

``replay`` sends each request through ``Router.stream`` at its arrival time (all
concurrently, in this process's event loop) and records its TTFT (the call to the first
chunk), its inter-token intervals (between successive chunks as this process receives
them; the decode worker streams one token a chunk), what the first chunk says was
reused and the prefill worker's own timings of it (queued there, then computing).
``run_policy`` also records the CPU seconds each role of the cluster used during the
replay (``ROLES``), read from ``/proc``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import grpc
import redis

from bench.procs import start_redis, start_strata, start_worker, wait_worker
from engine.config import load_engine_config
from engine.launch import Child, free_port
from engine.model.loader import TINY_MODEL_PATH, load_tokenizer
from engine.router.router import Chunk, Overloaded, Router
from engine.router.service import open_router
from engine.sampling import SamplingParams
from engine.service.client import DecodeClient
from kvstore._proto.strata.v1 import engine_pb2, engine_pb2_grpc
from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.types import BlockKey, NamespaceId, TierKind

MiB = 1 << 20
KEY_PREFIX = "strata"  # the store's default metadata.key_prefix
PAGE_TOKENS = 16  # the engine's KV page and store block
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BENCH_ROLE = "bench"  # this process: the router and the load generator
ROLES = {  # a child's name -> its role in the CPU accounting
    "redis": "redis",
    "strata": "store",
    "engine-prefill": "prefill",
    "engine-decode": "decode",
}
START_DELAY_S = 0.2  # a replay's first arrival comes this long after it starts


def page_bytes(model: Path | None, page_tokens: int = 16) -> int:
    """Bytes of one float32 KV page of ``model`` (None: the tiny built-in model): the
    store's block size for it."""
    c = load_tokenizer(model or TINY_MODEL_PATH).config
    return c.num_layers * 2 * page_tokens * c.num_kv_heads * c.head_dim * 4


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """What to start. ``model``: a checkpoint folder (None: the tiny built-in model)."""

    model: Path | None
    block_bytes: int  # one KV page of the model: the store's block
    store_bytes: int  # each node's DRAM tier
    kv_cache_bytes: int = 256 * MiB  # each prefill worker's paged cache
    decode_kv_cache_bytes: int = 512 * MiB  # every request in flight holds pages here
    num_prefills: int = 2
    threads: int = 1  # torch threads per worker
    pin: bool = True  # prefill worker i on core i mod cores
    peer_fetch: bool = True  # a node reads blocks it misses from the node holding them


class LocalCluster:
    """Redis, ``num_prefills`` store nodes each with its own prefill worker, one decode
    worker. Use as a context manager; ``close`` stops everything."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self._stack = ExitStack()
        self.node_ids = [f"bench-node-{i}" for i in range(spec.num_prefills)]
        self.store_addresses: list[str] = []
        self.prefill_addresses: list[str] = []
        self.decode_address = ""
        self.redis_port = 0
        self.pinned: dict[str, list[int]] = {}  # prefill address -> its cores
        self.children: list[Child] = []

    def start(self) -> LocalCluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        spec = self.spec
        redis_child = self._child(start_redis())
        self.redis_port = redis_child.port
        metadata = {
            "metadata.backend": "redis",
            "metadata.redis_url": f"redis://127.0.0.1:{self.redis_port}/0",
            "metadata.key_prefix": KEY_PREFIX,
        }
        for node_id in self.node_ids:
            node_flags = {
                **metadata,
                "store.node_id": node_id,
                "tiers.dram.pin_memory": "false",
                "server.peer_fetch": str(spec.peer_fetch).lower(),
            }
            node = self._child(
                start_strata(spec.block_bytes, spec.store_bytes, 4 * MiB, **node_flags)
            )
            self.store_addresses.append(f"127.0.0.1:{node.port}")
        cores = sorted(os.sched_getaffinity(0))
        starting: list[tuple[Child, set[int] | None]] = []
        for i, store in enumerate(self.store_addresses):
            cpus = {cores[i % len(cores)]} if spec.pin else None
            prefill_flags = {"engine.store": store, "prefill.port": free_port()}
            starting.append((self._worker("prefill", prefill_flags, cpus), cpus))
        for child, cpus in starting:  # they load the model at the same time
            address = wait_worker(child, cpus)
            self.prefill_addresses.append(address)
            if cpus is not None:
                self.pinned[address] = sorted(cpus)
        decode_flags = {
            "engine.store": "none",
            "decode.port": free_port(),
            "decode.data_port": 0,
            "decode.prefill": ",".join(self.prefill_addresses),
            "engine.kv_cache_bytes": spec.decode_kv_cache_bytes,
        }
        self.decode_address = wait_worker(self._worker("decode", decode_flags, None), None)

    def _worker(self, role: str, flags: dict[str, object], cpus: set[int] | None) -> Child:
        spec = self.spec
        common: dict[str, object] = {
            "engine.threads": spec.threads,
            "engine.prefix_caching": "false",  # reuse only through the store
            "engine.kv_cache_bytes": spec.kv_cache_bytes,
        }
        if spec.model is not None:
            common["engine.model"] = spec.model
        return self._child(start_worker(role, {**common, **flags}, cpus))

    def _child(self, child: Child) -> Child:
        self.children.append(child)
        return self._stack.enter_context(child)

    def cpu_s(self) -> float:
        """CPU seconds used so far by this process and every child of the cluster."""
        return sum(self.cpu_s_by_role().values())

    def cpu_s_by_role(self) -> dict[str, float]:
        """CPU seconds used so far per role (``ROLES``; this process is ``BENCH_ROLE``)."""
        return self._by_role(process_cpu_s)

    def wait_s_by_role(self) -> dict[str, float]:
        """Seconds the threads of each role have waited on a run queue for a core so far."""
        return self._by_role(process_wait_s)

    def _by_role(self, clock: Callable[[int], float]) -> dict[str, float]:
        used = {BENCH_ROLE: clock(os.getpid())}
        for child in self.children:
            role = ROLES.get(child.name, child.name)
            used[role] = used.get(role, 0.0) + clock(child.proc.pid)
        return used

    def router_overrides(self) -> dict[str, str]:
        """The ``router.*`` config keys that point a router at this cluster."""
        return {
            "router.prefill": ",".join(self.prefill_addresses),
            "router.decode": self.decode_address,
        }

    async def flush(self, timeout_s: float = 30.0) -> int:
        """Drop every block from every node; wait until the nodes' DRAM tiers and their
        entries in the global index are empty. Returns the blocks dropped."""
        dropped = 0
        for address in self.store_addresses:
            client = StoreClient(address, CallOptions(timeout_s=timeout_s, retries=0))
            try:
                dropped += await client.flush(TierKind.DRAM)
            finally:
                await client.close()
        deadline = time.monotonic() + timeout_s
        while (left := await self._blocks_left()) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{left} blocks still cached {timeout_s} s after a flush")
            await asyncio.sleep(0.02)
        return dropped

    async def _blocks_left(self) -> int:
        """Blocks still in the nodes' DRAM tiers plus their global index entries."""
        left = 0
        for address in self.store_addresses:
            client = StoreClient(address, CallOptions(timeout_s=5.0, retries=0))
            try:
                stats = await client.stats()
            finally:
                await client.close()
            left += sum(t.num_blocks for t in stats.tiers)
        with redis.Redis(port=self.redis_port, socket_timeout=5.0) as db:
            for node_id in self.node_ids:
                left += int(db.scard(f"{KEY_PREFIX}:nodeidx:{node_id}"))
        return left

    async def wait_published(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], timeout_s: float = 10.0
    ) -> None:
        """Wait until node 1 sees node 0 holding all of ``keys`` (its lookups answer from
        the global index, which node 0 updates in the background)."""
        client = StoreClient(self.store_addresses[1], CallOptions(timeout_s=5.0, retries=0))
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                nodes = await client.lookup(ns_id, keys)
                if any(n.node_id == self.node_ids[0] and n.num_blocks >= len(keys) for n in nodes):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node 1 did not see node 0's blocks in {timeout_s} s")
                await asyncio.sleep(0.01)
        finally:
            await client.close()

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: object, tb: TracebackType | None
    ) -> None:
        self.close()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def process_wait_s(pid: int) -> float:
    """Seconds the threads of ``pid`` have waited on a run queue, runnable, for a core
    (Linux scheduler statistics; 0 where the kernel keeps none)."""
    waited_ns = 0
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in threads:
        try:
            waited_ns += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended, or no scheduler statistics
    return waited_ns / 1e9


def host_cpu_s() -> float:
    """CPU seconds every core has spent busy (or stolen by the hypervisor) since boot."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


# -- replaying requests through a router on the cluster ---------------------------------


@dataclass(frozen=True, slots=True)
class TimedRequest:
    arrival_s: float  # after the slice's first request, scaled
    hash_ids: tuple[int, ...]
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Outcome:
    ttft_s: float  # first call of Router.stream -> first chunk (rejections' waits included)
    late_s: float  # how long after its arrival time it was sent
    prompt_tokens: int
    cached_tokens: int
    remote_tokens: int  # of the cached ones, served by the other node
    prefill: str
    num_rejections: int  # Overloaded answers before it ran (each waited out, then retried)
    itl_s: tuple[float, ...]  # between successive chunks after the first (one token each)
    prefill_queue_s: float  # the prefill worker's own timings of it: waiting there,
    prefill_compute_s: float  # and admitted to finished (computing, loading, batched)
    place_s: float  # the router's placement of it: store lookups and the policy


class PolicyRun(NamedTuple):
    outcomes: list[Outcome]
    lookups: dict[str, int]  # the global view's store lookups: answered, timed_out, failed
    pulled_blocks: int  # blocks the policy chose to pull from the other node
    others_cpu_share: float  # of the cores, used by processes outside the bench meanwhile
    cpu_s: dict[str, float]  # CPU seconds each role of the cluster used during the replay
    wait_s: dict[str, float]  # seconds each role's threads waited for a core meanwhile
    wall_s: float  # the replay's first send to its last answer
    counters: dict[str, float]  # the workers' own counters meanwhile (``worker_counters``)


def pooled(runs: Sequence[PolicyRun]) -> PolicyRun:
    """Several runs of one policy as one: outcomes, counts, CPU and wall seconds added,
    host load averaged."""
    lookups: Counter[str] = Counter()
    cpu_s: Counter[str] = Counter()
    wait_s: Counter[str] = Counter()
    counters: Counter[str] = Counter()
    for run in runs:
        lookups.update(run.lookups)
        cpu_s.update(run.cpu_s)
        wait_s.update(run.wait_s)
        counters.update(run.counters)
    return PolicyRun(
        [o for run in runs for o in run.outcomes],
        dict(lookups),
        sum(run.pulled_blocks for run in runs),
        statistics.fmean(run.others_cpu_share for run in runs),
        dict(cpu_s),
        dict(wait_s),
        sum(run.wall_s for run in runs),
        dict(counters),
    )


async def replay(
    router: Router,
    requests: Sequence[TimedRequest],
    prompts: Sequence[list[int]],
    advance: Callable[[], None],
) -> list[Outcome]:
    """Send every request at its arrival time (all concurrently); one outcome each. A
    request the router rejects (``Overloaded``, a 429 over HTTP) is sent again after the
    ``retry_after_s`` it was given, as a client honouring Retry-After would."""
    start = time.perf_counter() + START_DELAY_S

    async def one(request: TimedRequest, tokens: list[int]) -> Outcome:
        await asyncio.sleep(max(0.0, start + request.arrival_s - time.perf_counter()))
        sent = time.perf_counter()
        params = SamplingParams(temperature=0.0, max_tokens=request.output_tokens, ignore_eos=True)
        rejections = 0
        while True:
            try:
                placing = time.perf_counter()
                placement = await router.place(tokens, params.max_tokens)
                place_s = time.perf_counter() - placing
                stream = router.stream(tokens, params, placement=placement)
                first, ttft_s, itl_s = await _drain(stream, sent)
                break
            except Overloaded as exc:
                rejections += 1
                await asyncio.sleep(exc.retry_after_s)
        advance()
        late_s = sent - start - request.arrival_s
        cached, remote = first.cached_tokens, first.cached_remote_tokens
        return Outcome(
            ttft_s,
            late_s,
            len(tokens),
            cached,
            remote,
            first.prefill,
            rejections,
            itl_s,
            first.prefill_queue_s,
            first.prefill_compute_s,
            place_s,
        )

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(r, p)) for r, p in zip(requests, prompts, strict=True)]
    return [task.result() for task in tasks]


async def _drain(
    chunks: AsyncIterator[Chunk], sent: float
) -> tuple[Chunk, float, tuple[float, ...]]:
    """Read a stream to its end: its first chunk, that chunk's seconds after ``sent``,
    and the seconds between each token-carrying chunk and the one before it."""
    first: Chunk | None = None
    ttft_s = 0.0
    arrivals: list[float] = []
    async for chunk in chunks:
        now = time.perf_counter()
        if first is None:
            first, ttft_s = chunk, now - sent
        if len(chunk.token_ids) > 1:
            raise RuntimeError(f"a chunk carried {len(chunk.token_ids)} tokens (one expected)")
        if chunk.token_ids:
            arrivals.append(now)
    if first is None:
        raise RuntimeError("a request streamed no token")
    return first, ttft_s, tuple(b - a for a, b in itertools.pairwise(arrivals))


async def run_policy(
    cluster: LocalCluster,
    flags: dict[str, str],
    requests: Sequence[TimedRequest],
    prompts: Sequence[list[int]],
    advance: Callable[[], None],
) -> PolicyRun:
    """Replay on a fresh router with ``flags``, then flush the stores."""
    service = await open_router(load_engine_config(env={}, overrides=flags))
    try:
        counters = await worker_counters(cluster)
        start, host, ours = time.perf_counter(), host_cpu_s(), cluster.cpu_s_by_role()
        waited = cluster.wait_s_by_role()
        outcomes = await replay(service.router, requests, prompts, advance)
        wall_s = time.perf_counter() - start
        used = cluster.cpu_s_by_role()
        cpu_s = {role: used[role] - ours.get(role, 0.0) for role in used}
        wait_s = {role: s - waited.get(role, 0.0) for role, s in cluster.wait_s_by_role().items()}
        others_s = (host_cpu_s() - host) - sum(cpu_s.values())
        counters_after = await worker_counters(cluster)
        run = PolicyRun(
            outcomes,
            dict(service.router.view.lookups),
            service.router.counts["pulled_blocks"],
            max(0.0, others_s) / (wall_s * len(os.sched_getaffinity(0))),
            cpu_s,
            wait_s,
            wall_s,
            {name: counters_after[name] - counters[name] for name in counters},
        )
    finally:
        await service.close()
    await cluster.flush()
    return run


DECODE_COUNTERS = (
    "steps",
    "batched_tokens",
    "batched_context_tokens",
    "step_s",
    "step_cpu_s",
    "step_wait_s",
)
PREFILL_COUNTERS = (
    "requests",
    "forward_passes",
    "admit_s",
    "forward_s",
    "forward_cpu_s",
    "forward_wait_s",
    "pass_end_s",
    "finish_s",
)


async def worker_counters(cluster: LocalCluster) -> dict[str, float]:
    """The workers' own counters (``DecodeStats``, ``PrefillStats``; the prefill workers'
    summed), named ``decode_<counter>`` and ``prefill_<counter>``: the decode worker's
    steps, the sequences they fed and those sequences' context tokens, their wall seconds
    and the decode thread's CPU seconds in them; the prefill workers' prompts, passes and
    where their threads' wall seconds went."""
    async with DecodeClient(cluster.decode_address) as client:
        decode = (await client.stats())["decode"]
    counters = {f"decode_{name}": float(decode[name]) for name in DECODE_COUNTERS}
    for address in cluster.prefill_addresses:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = engine_pb2_grpc.PrefillServiceStub(channel)
            reply = await stub.Stats(engine_pb2.EngineStatsRequest())
        prefill = json.loads(reply.json)["prefill"]
        for name in PREFILL_COUNTERS:
            key = f"prefill_{name}"
            counters[key] = counters.get(key, 0.0) + float(prefill[name])
    return counters
