"""Build, run and stop a store node's gRPC server.

``start_node`` opens the store and metadata, binds the gRPC server (``server.port`` 0
picks a free port), and returns a ``RunningNode``; ``serve`` runs one until SIGTERM or
SIGINT, then shuts down gracefully: stop accepting, let in-flight calls finish within
``server.grace_s``, write blocks held only in memory down to NVMe (when NVMe is under
them) within what is left of ``server.grace_s``, leave the cluster, close the store.
Served alongside the store and admin services: gRPC health checking and server
reflection.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvstore._proto.strata.v1 import admin_pb2, admin_pb2_grpc, store_pb2
from kvstore.access import Role
from kvstore.client.calls import MAX_MESSAGE_BYTES
from kvstore.config import Config
from kvstore.errors import ConfigError
from kvstore.metadata.factory import open_metadata
from kvstore.server.admin_service import AdminServicer
from kvstore.server.auth import AuthInterceptor
from kvstore.server.metrics import MetricsInterceptor, NodeMetrics
from kvstore.server.node import StoreNode
from kvstore.server.store_service import StoreServicer
from kvstore.server.store_service import add_to_server as add_store_service
from kvstore.store import NodeStore

logger = logging.getLogger(__name__)

SERVICE_NAMES = (
    store_pb2.DESCRIPTOR.services_by_name["StoreService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


@dataclass
class RunningNode:
    node: StoreNode
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    metrics: NodeMetrics
    port: int
    metrics_port: int | None

    @property
    def address(self) -> str:
        return self.node.address

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, drain in-flight calls, write memory-only blocks
        down to NVMe, leave, close; draining and the write-down share ``grace_s``."""
        grace = self.node.config.server.grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)
        await self.metrics.close()
        try:
            await self.node.store.write_down(max(0.0, deadline - time.monotonic()))
        finally:
            await self.node.close()


async def start_node(config: Config) -> RunningNode:
    """Open the store, bind the server, join the cluster. Raises on a bad config."""
    store = await NodeStore.open(config)
    try:
        metadata = open_metadata(
            config.metadata.backend.value,
            redis_url=config.metadata.redis_url,
            key_prefix=config.metadata.key_prefix,
            timeout_s=config.metadata.timeout_s,
        )
    except BaseException:
        await store.close()
        raise
    node: StoreNode | None = None
    metrics = NodeMetrics(
        store.stats,
        lambda: node is not None and node.degraded,
        config.server.metrics_max_namespaces,
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
        interceptors=_interceptors(config, metrics),
    )
    try:
        port = _bind(server, config)
    except BaseException:
        await metadata.close()
        await store.close()
        raise
    node = StoreNode(
        config,
        store,
        metadata,
        address=config.server.advertise_address or f"{config.server.host}:{port}",
        observe_dataplane=metrics.observe_dataplane if config.server.metrics_enabled else None,
    )
    return await _start(config, server, node, metrics, port)


async def _start(
    config: Config, server: grpc.aio.Server, node: StoreNode, metrics: NodeMetrics, port: int
) -> RunningNode:
    add_store_service(StoreServicer(node), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(node), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    await server.start()
    metrics_port = None
    try:
        await node.start()
        if config.server.metrics_enabled:
            metrics_port = await metrics.serve(config.server.host, config.server.metrics_port)
    except BaseException:
        await server.stop(None)
        await metrics.close()
        await node.close()
        raise
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info(
        "node %s serving on %s (metrics on %s, metadata %s)",
        node.node_id,
        node.address,
        metrics_port,
        config.metadata.backend.value,
    )
    return RunningNode(node, server, health_servicer, metrics, port, metrics_port)


async def serve(config: Config, on_ready: Callable[[RunningNode], None] | None = None) -> None:
    """Run a node until SIGTERM or SIGINT, then stop it gracefully."""
    running = await start_node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready(running)
    try:
        await stop.wait()
        logger.info(
            "shutting down: draining in-flight calls for up to %.1f s", config.server.grace_s
        )
    finally:
        await running.stop()


def _interceptors(config: Config, metrics: NodeMetrics | None) -> list[grpc.aio.ServerInterceptor]:
    """Auth first: it sees every call and may deny it; metrics time what runs (and cache
    one timed handler per method, which is only safe behind auth)."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if config.auth.access.anonymous is not Role.ADMIN:
        interceptors.append(AuthInterceptor(config.auth.access))
    if metrics is not None and config.server.metrics_enabled:
        interceptors.append(MetricsInterceptor(metrics))
    return interceptors


def _bind(server: grpc.aio.Server, config: Config) -> int:
    target = f"{config.server.host}:{config.server.port}"
    if config.tls.enabled:
        assert config.tls.cert_file is not None and config.tls.key_file is not None
        credentials = grpc.ssl_server_credentials(
            [(config.tls.key_file.read_bytes(), config.tls.cert_file.read_bytes())]
        )
        port = server.add_secure_port(target, credentials)
    else:
        port = server.add_insecure_port(target)
    if port == 0:
        raise ConfigError(
            "server.port", f"cannot listen on {target} (in use, or not an address here)"
        )
    return port
