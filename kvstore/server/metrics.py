"""Prometheus metrics of one store node, served from the event loop.

Counters come straight from the node store's statistics at scrape time (a collector,
so nothing is counted twice and the store keeps a single source of truth); RPC
latencies are histograms fed by an interceptor. Each node has its own registry (no
process-wide globals), served by a minimal asyncio HTTP endpoint, so scrapes read store
state on the loop thread that owns it.

    strata_hit_blocks_total{tier, namespace}        strata_miss_blocks_total{reason, namespace}
    strata_hit_tokens_total{tier, namespace}        strata_miss_tokens_total{reason, namespace}
    strata_tier_used_bytes{tier}                    strata_tier_capacity_bytes{tier}
    strata_tier_blocks{tier}                        strata_evicted_blocks_total{tier}
    strata_demoted_blocks_total{source, target}     strata_promoted_blocks_total{source, target}
    strata_corrupted_blocks_total{tier}             strata_put_blocks_total
    strata_put_slow_blocks_total                    strata_put_skipped_blocks_total
    strata_peer_hit_blocks_total{namespace}         strata_peer_hit_tokens_total{namespace}
    strata_pinned_blocks                            strata_stats_since_seconds
    strata_open_reservations                        strata_read_pins
    strata_degraded                                 strata_rpc_duration_seconds{method, code}
    strata_dataplane_duration_seconds{op}

``namespace`` is ``kvstore.stats.namespace_label`` (model id and a short namespace id).
Peer hits are blocks other nodes supplied to this node's clients; the holder counts
them in its own ``strata_hit_blocks_total``, so a cluster-wide hit rate sums tier hits
and misses only. Label cardinality is bounded: the ``namespace`` label is kept for the
``server.metrics_max_namespaces`` busiest namespaces (most blocks hit plus missed; ties
by label); the others are summed under ``namespace="_other"``, so a scrape stays small
however many namespaces a node holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kvstore.stats import NamespaceStats, StatsSnapshot, namespace_label
from kvstore.types import NamespaceId

if TYPE_CHECKING:
    from kvstore.server.auth import Continuation, Handler

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)


OTHER_NAMESPACES = "_other"  # the label of every namespace past the cap


class StoreCollector:
    def __init__(
        self,
        stats: Callable[[], StatsSnapshot],
        degraded: Callable[[], bool],
        max_namespace_labels: int = 32,
    ) -> None:
        self._stats = stats
        self._degraded = degraded
        self._max_labels = max_namespace_labels

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield from self._hits_and_misses(s)
        gauges = {
            "used_bytes": GaugeMetricFamily(
                "strata_tier_used_bytes", "Bytes in use", labels=["tier"]
            ),
            "capacity_bytes": GaugeMetricFamily(
                "strata_tier_capacity_bytes", "Tier capacity", labels=["tier"]
            ),
            "num_blocks": GaugeMetricFamily(
                "strata_tier_blocks", "Blocks resident", labels=["tier"]
            ),
        }
        for usage in s.tiers:
            for name, family in gauges.items():
                family.add_metric([usage.tier.value], getattr(usage, name))
        yield from gauges.values()
        tiers = [usage.tier for usage in s.tiers]
        yield _by_tier(
            "strata_evicted_blocks_total", "Blocks dropped by eviction", s.evictions, tiers
        )
        yield _by_tier(
            "strata_corrupted_blocks_total",
            "Blocks failing their checksum",
            s.corrupted_blocks,
            tiers,
        )
        yield _moves("strata_demoted_blocks_total", "Blocks demoted", s.demotions)
        yield _moves("strata_promoted_blocks_total", "Blocks promoted", s.promotions)
        yield _counter("strata_put_blocks_total", "Blocks stored by puts", s.put_blocks)
        yield _counter(
            "strata_put_slow_blocks_total",
            "Blocks put straight into the slowest tier (admission)",
            s.put_slow_blocks,
        )
        yield _counter(
            "strata_put_skipped_blocks_total",
            "Blocks the admission policy did not store",
            s.put_skipped_blocks,
        )
        yield _gauge("strata_pinned_blocks", "Blocks under an admin pin", s.num_pinned_blocks)
        yield _gauge(
            "strata_open_reservations",
            "Puts reserved and neither committed nor aborted",
            s.num_open_reservations,
        )
        yield _gauge(
            "strata_read_pins",
            "Block acquisitions by reads in flight, moves and leases",
            s.num_read_pins,
        )
        yield _gauge(
            "strata_stats_since_seconds",
            "Unix time the counters started (start or reset)",
            s.since_s,
        )
        yield _gauge(
            "strata_degraded",
            "1 while the metadata service is unreachable",
            float(self._degraded()),
        )

    def _hits_and_misses(self, s: StatsSnapshot) -> Iterator[Metric]:
        labels = namespace_labels(s.namespaces, self._max_labels)
        sums: dict[str, dict[tuple[str, ...], int]] = {
            "hit_blocks": {},
            "hit_tokens": {},
            "miss_blocks": {},
            "miss_tokens": {},
            "peer_hit_blocks": {},
            "peer_hit_tokens": {},
        }
        for ns in s.namespaces:
            name = labels[ns.namespace_id]
            for tier, blocks in ns.hit_blocks.items():
                _add(sums["hit_blocks"], (tier.value, name), blocks)
                _add(sums["hit_tokens"], (tier.value, name), ns.hit_tokens[tier])
            for reason, blocks in ns.miss_blocks.items():
                _add(sums["miss_blocks"], (reason.value, name), blocks)
                _add(sums["miss_tokens"], (reason.value, name), ns.miss_tokens[reason])
            _add(sums["peer_hit_blocks"], (name,), ns.peer_hit_blocks)
            _add(sums["peer_hit_tokens"], (name,), ns.peer_hit_blocks * ns.block_tokens)
        docs = {
            "hit_blocks": "Blocks served",
            "hit_tokens": "Tokens served",
            "miss_blocks": "Blocks missed",
            "miss_tokens": "Tokens missed",
            "peer_hit_blocks": "Blocks other nodes supplied for clients",
            "peer_hit_tokens": "Tokens other nodes supplied for clients",
        }
        for what, values in sums.items():
            first = ["tier"] if what.startswith("hit") else ["reason"] if "miss" in what else []
            family = CounterMetricFamily(f"strata_{what}", docs[what], labels=[*first, "namespace"])
            for label_values, count in values.items():
                family.add_metric(list(label_values), count)
            yield family


def namespace_labels(namespaces: list[NamespaceStats], max_labels: int) -> dict[NamespaceId, str]:
    """The ``namespace`` label of each namespace id (``namespace_label``) for the
    ``max_labels`` busiest namespaces, ``_other`` for the rest."""
    activity = {
        ns.namespace_id: sum(ns.hit_blocks.values()) + sum(ns.miss_blocks.values())
        for ns in namespaces
    }
    names = {ns.namespace_id: namespace_label(ns.model_id, ns.namespace_id) for ns in namespaces}
    kept = set(sorted(names, key=lambda n: (-activity[n], names[n]))[:max_labels])
    return {n: names[n] if n in kept else OTHER_NAMESPACES for n in names}


def _add(sums: dict[tuple[str, ...], int], key: tuple[str, ...], value: int) -> None:
    sums[key] = sums.get(key, 0) + value


def _counter(name: str, doc: str, value: float) -> Metric:
    family = CounterMetricFamily(name, doc)
    family.add_metric([], value)
    return family


def _gauge(name: str, doc: str, value: float) -> Metric:
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], value)
    return family


def _by_tier(name: str, doc: str, values: dict[Any, int], tiers: list[Any]) -> Metric:
    """A counter per enabled tier (0 until something happens, so rates start at once)."""
    family = CounterMetricFamily(name.removesuffix("_total"), doc, labels=["tier"])
    for tier in tiers:
        family.add_metric([tier.value], values.get(tier, 0))
    return family


def _moves(name: str, doc: str, values: dict[Any, int]) -> Metric:
    family = CounterMetricFamily(name.removesuffix("_total"), doc, labels=["source", "target"])
    for (source, target), count in values.items():
        family.add_metric([source.value, target.value], count)
    return family


class NodeMetrics:
    """One node's registry: the store collector and the RPC latency histogram."""

    def __init__(
        self,
        stats: Callable[[], StatsSnapshot],
        degraded: Callable[[], bool],
        max_namespace_labels: int = 32,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(stats, degraded, max_namespace_labels))
        self.rpc_seconds = Histogram(
            "strata_rpc_duration_seconds",
            "RPC latency by method and status",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.dataplane_seconds = Histogram(
            "strata_dataplane_duration_seconds",
            "Data-plane request latency by operation",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._server: asyncio.Server | None = None

    def observe_dataplane(self, op: str, seconds: float) -> None:
        self.dataplane_seconds.labels(op).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(self, host: str, port: int) -> int:
        """Serve ``GET /metrics`` on ``host:port`` (0: any free port); returns the port."""
        self._server = await asyncio.start_server(self._handle, host, port)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path.split(b"?")[0] == b"/metrics":
                status, body = b"200 OK", self.exposition()
            else:
                status, body = b"404 Not Found", b"try /metrics\n"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                b"Content-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times every RPC into ``strata_rpc_duration_seconds{method, code}``."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self._histogram = metrics.rpc_seconds
        self._wrapped: dict[str, Handler] = {}  # one timed handler per method, reused

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        full_name = handler_call_details.method or ""
        cached = self._wrapped.get(full_name)
        if cached is None:
            cached = self._wrapped[full_name] = self._timed(handler, full_name.rsplit("/", 1)[-1])
        return cached

    def _timed(self, handler: Handler, method: str) -> Handler:
        observe = self._histogram

        def record(start: float, context: grpc.aio.ServicerContext) -> None:
            code = context.code() if hasattr(context, "code") else None
            name = (
                code.name
                if isinstance(code, grpc.StatusCode)
                else "OK"
                if code is None
                else str(code)
            )
            observe.labels(method, name).observe(time.perf_counter() - start)

        if handler.response_streaming:
            inner_stream: Any = handler.unary_stream or handler.stream_stream

            async def timed_stream(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                start = time.perf_counter()
                try:
                    async for item in inner_stream(request, context):
                        yield item
                finally:
                    record(start, context)

            return _replace(handler, timed_stream)
        inner: Any = handler.unary_unary or handler.stream_unary

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                return await inner(request, context)
            finally:
                record(start, context)

        return _replace(handler, timed)


def _replace(handler: Handler, behaviour: Any) -> Handler:
    kinds: dict[tuple[bool, bool], Any] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[handler.request_streaming, handler.response_streaming]
    replaced: Handler = make(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return replaced
