"""Running a prefill or a decode worker as its own process.

``kvengine prefill``: a prefill worker behind ``PrefillService`` (port 7610), with its
store link (``engine.store``) and a transfer engine to write KV into decode workers.

``kvengine decode``: a decode worker behind ``DecodeService`` (port 7620), with a data
plane (port 7621) on which its paged cache is the segment ``kv`` that prefill workers
write into; it asks the prefill workers of ``decode.prefill`` to prefill each request.
With ``decode.prefill = "local"`` it is a colocated worker instead: a prefill worker in
the same process shares its cache (the single-machine arrangement, behind the same API).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from engine.build import EMBEDDED, StoreLink, cache_for, load_for, open_store
from engine.config import LOCAL, EngineConfig
from engine.core import Engine, LocalPrefill, Prefill
from engine.kv.cache import PagedKVCache
from engine.kv.write_back import WriteBack
from engine.roles import WorkerRole
from engine.service.remote_prefill import RemotePrefill
from engine.service.servicers import DecodeServicer, PrefillServicer
from engine.workers.decode import DecodeWorker
from engine.workers.device import Device
from engine.workers.prefill import PrefillWorker
from kvstore._proto.strata.v1 import engine_pb2_grpc
from kvstore.access import Access
from kvstore.connector.layouts import PageMajorLayout
from kvstore.connector.worker import KVConnector
from kvstore.hashing import Namespace
from kvstore.server.auth import AuthInterceptor
from kvstore.transfer.connection import local_host_id
from kvstore.transfer.engine import TransferEngine
from kvstore.transfer.segments import Segment, SegmentRegistry
from kvstore.transfer.server import SegmentServer

logger = logging.getLogger(__name__)
GUARDED = ("/strata.v1.PrefillService/", "/strata.v1.DecodeService/")


@dataclass
class RunningWorker:
    role: WorkerRole
    address: str  # gRPC HOST:PORT
    server: grpc.aio.Server
    cache: PagedKVCache
    data_plane: list[str] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)

    async def stop(self, grace_s: float = 1.0) -> None:
        await self.server.stop(grace_s)
        for close in reversed(self.closers):
            result = close()
            if result is not None:
                await result


def _grpc_server(token: str) -> grpc.aio.Server:
    access = Access(writer_token=token)
    interceptors = [AuthInterceptor(access, guarded=GUARDED)] if token else []
    return grpc.aio.server(interceptors=interceptors)


async def start_prefill(config: EngineConfig) -> RunningWorker:
    section = config.engine
    loaded = load_for(section)
    cache = cache_for(section, loaded)
    namespace = Namespace(loaded.config.model_id, cache.spec, section.namespace_salt)
    store: StoreLink = await open_store(
        section.store_address, namespace, store_bytes=section.store_bytes, token=section.token
    )
    transfer = TransferEngine(host_id=local_host_id(), token=section.token)
    worker = PrefillWorker(
        loaded.model,
        cache,
        loop=asyncio.get_running_loop(),
        store=store.backend,
        transfer=transfer,
        chunk_tokens=section.chunk_tokens,
        max_batch_tokens=section.max_batch_tokens,
        prefix_caching=section.prefix_caching,
    ).start()

    def stats() -> dict[str, object]:
        out: dict[str, object] = {"prefill": worker.stats.as_dict()}
        if store.backend is not None:
            out["store"] = store.backend.stats.as_dict()
        return out

    server = _grpc_server(section.token)
    client = store.backend.client if store.backend else None
    engine_pb2_grpc.add_PrefillServiceServicer_to_server(
        PrefillServicer(worker, stats, client), server
    )
    port = server.add_insecure_port(f"{config.prefill.host}:{config.prefill.port}")
    await server.start()
    running = RunningWorker(WorkerRole.PREFILL, f"{config.prefill.host}:{port}", server, cache)
    running.closers += [store.close, transfer.close, worker.stop]
    return running


async def start_decode(config: EngineConfig) -> RunningWorker:
    """A decode worker; with ``decode.prefill = "local"`` it prefills too, in this process
    over the same cache (colocated), and needs no data plane."""
    section = config.engine
    loaded = load_for(section)
    cache = cache_for(section, loaded)
    namespace = Namespace(loaded.config.model_id, cache.spec, section.namespace_salt)
    closers: list[Callable[[], Awaitable[None] | None]] = []
    addresses: list[str] = []
    prefill: Prefill
    write_back: WriteBack
    device = Device()  # a colocated prefill worker computes on the same device
    if config.decode.prefill == LOCAL:
        store = await open_store(
            section.store_address, namespace, store_bytes=section.store_bytes, token=section.token
        )
        local = PrefillWorker(
            loaded.model,
            cache,
            loop=asyncio.get_running_loop(),
            store=store.backend,
            chunk_tokens=section.chunk_tokens,
            max_batch_tokens=section.max_batch_tokens,
            prefix_caching=section.prefix_caching,
            device=device,
        ).start()
        prefill = LocalPrefill(local)
        write_back = local.write_back()
        closers += [store.close, local.stop]
    else:
        registry = SegmentRegistry()
        registry.register(Segment("kv", cache.landing_memory()))
        data_plane = SegmentServer(  # segments only: no store ops are served here
            f"decode-{uuid.uuid4().hex[:8]}",
            local_host_id(),
            registry,
            access=Access(writer_token=section.token),
        )
        addresses = await data_plane.start([config.decode.host], config.decode.data_port)
        remote = RemotePrefill(
            config.decode.prefill_addresses,
            cache,
            namespace,
            addresses,
            max_context=loaded.config.max_position_embeddings,
            token=section.token,
            timeout_s=config.decode.prefill_timeout_s,
            page_wait_s=config.decode.page_wait_s,
            landed=data_plane.arrivals.forget,
        )
        prefill = remote
        closers += [data_plane.close, remote.close]
        # the answers' KV goes to the store the prefill workers read (an embedded node in
        # this process would be one nobody else reads)
        saves = section.store_address if section.store_address != EMBEDDED else None
        if saves is None and section.store_address == EMBEDDED:
            logger.warning(
                "engine.store = embedded: a separate decode worker saves its answers' KV only"
                " to a store node (engine.store = HOST:PORT)"
            )
        store = await open_store(saves, namespace, token=section.token)
        closers.insert(0, store.close)
        connector = KVConnector(
            PageMajorLayout(cache.pages, cache.spec),
            loop=asyncio.get_running_loop(),
            store=store.backend,
        )
        write_back = WriteBack(cache, namespace, connector=connector)
    worker = DecodeWorker(
        loaded.model,
        cache,
        tokenizer=loaded.tokenizer,
        max_batch=section.max_batch,
        device=device,
        write_back=write_back,
    ).start()
    closers.append(worker.stop)
    engine = Engine(prefill, worker, eos_token_ids=loaded.eos_token_ids)
    server = _grpc_server(section.token)
    engine_pb2_grpc.add_DecodeServiceServicer_to_server(
        DecodeServicer(engine, loaded.tokenizer, namespace), server
    )
    port = server.add_insecure_port(f"{config.decode.host}:{config.decode.port}")
    await server.start()
    running = RunningWorker(
        WorkerRole.DECODE, f"{config.decode.host}:{port}", server, cache, addresses
    )
    running.closers += closers
    return running


async def serve(role: WorkerRole, config: EngineConfig) -> None:
    """Run one worker until SIGINT or SIGTERM; print one JSON line when it is up."""
    start = start_prefill if role is WorkerRole.PREFILL else start_decode
    running = await start(config)
    print(
        json.dumps({"role": role, "address": running.address, "data_plane": running.data_plane}),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("%s worker stopping", role)
    await running.stop()
