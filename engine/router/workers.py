"""The workers a router sends requests to, and what it knows of each.

Each prefill and decode worker is reached over gRPC; its ``Info`` (model, KV page layout,
store node, load) is read at start and then every ``health_interval_s``. A worker that
does not answer, or that a request found dead, is marked unhealthy and skipped until it
answers again.

The router also keeps its own accounts of the load it has placed, which move at once
(the workers' own figures arrive a health check later): per prefill worker, the predicted
seconds of prefill work queued there; per decode worker, the requests streaming from it
and their context tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import grpc

from engine.roles import WorkerRole
from engine.router.views import DecodeView, PrefillView
from kvstore._proto.strata.v1 import engine_pb2, engine_pb2_grpc
from kvstore.access import bearer_metadata

logger = logging.getLogger(__name__)


@dataclass
class Worker:
    id: str  # its address
    role: WorkerRole
    channel: grpc.aio.Channel
    info: engine_pb2.WorkerInfo = field(default_factory=engine_pb2.WorkerInfo)
    healthy: bool = False
    down_since: float = 0.0
    # the router's own accounts
    queued_s: float = 0.0  # prefill: predicted seconds of work placed and not yet done
    running: int = 0  # decode: requests streaming
    context_tokens: int = 0  # decode: their prompts and outputs so far

    @property
    def address(self) -> str:
        return self.id


class WorkerPool:
    def __init__(
        self,
        prefill: list[str],
        decode: list[str],
        *,
        token: str = "",
        health_interval_s: float = 1.0,
    ) -> None:
        if not prefill or not decode:
            raise ValueError("a router needs at least one prefill and one decode worker")
        self._metadata = bearer_metadata(token)
        self._interval_s = health_interval_s
        self.prefill = {
            a: Worker(a, WorkerRole.PREFILL, grpc.aio.insecure_channel(a)) for a in prefill
        }
        self.decode = {
            a: Worker(a, WorkerRole.DECODE, grpc.aio.insecure_channel(a)) for a in decode
        }
        self._task: asyncio.Task[None] | None = None

    @property
    def workers(self) -> list[Worker]:
        return [*self.prefill.values(), *self.decode.values()]

    async def start(self, wait_s: float = 60.0) -> None:
        """Read every worker's info (waiting up to ``wait_s`` for all to answer), then
        keep checking them in the background."""
        deadline = time.monotonic() + wait_s
        while True:
            await self.check()
            missing = [w.id for w in self.workers if not w.healthy]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not answering: {', '.join(missing)}")
            await asyncio.sleep(0.2)
        self._check_same_model()
        self._task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for worker in self.workers:
            await worker.channel.close()

    async def check(self) -> None:
        await asyncio.gather(*(self._check(w) for w in self.workers))

    def mark_down(self, worker: Worker, why: str) -> None:
        if worker.healthy:
            logger.warning("%s worker %s is down: %s", worker.role, worker.id, why)
        worker.healthy = False
        worker.down_since = time.monotonic()

    def prefill_views(self) -> list[PrefillView]:
        return [PrefillView(w.id, w.queued_s, w.healthy) for w in self.prefill.values()]

    def decode_views(self) -> list[DecodeView]:
        return [
            DecodeView(w.id, w.running, w.context_tokens, max(1, w.info.max_batch), w.healthy)
            for w in self.decode.values()
        ]

    def by_store_node(self) -> dict[str, str]:
        """Store node id -> the prefill worker using it."""
        return {w.info.store_node_id: w.id for w in self.prefill.values() if w.info.store_node_id}

    def store_addresses(self) -> list[str]:
        return sorted({w.info.store_address for w in self.prefill.values() if w.info.store_address})

    def any_info(self) -> engine_pb2.WorkerInfo:
        return next(iter(self.prefill.values())).info

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.check()

    async def _check(self, worker: Worker) -> None:
        request = engine_pb2.WorkerInfoRequest()
        try:
            if worker.role is WorkerRole.PREFILL:
                stub: engine_pb2_grpc.PrefillServiceStub | engine_pb2_grpc.DecodeServiceStub
                stub = engine_pb2_grpc.PrefillServiceStub(worker.channel)
            else:
                stub = engine_pb2_grpc.DecodeServiceStub(worker.channel)
            info = await stub.Info(
                request, timeout=max(1.0, self._interval_s), metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            self.mark_down(worker, exc.details() or exc.code().name)
            return
        if not worker.healthy and worker.down_since:
            logger.info("%s worker %s is back", worker.role, worker.id)
        worker.info, worker.healthy = info, True
        if worker.role is WorkerRole.PREFILL and info.queued == 0 and worker.queued_s > 0:
            worker.queued_s = 0.0  # idle now: whatever the accounts say

    def _check_same_model(self) -> None:
        layouts = {(w.info.model_id, w.info.namespace_id) for w in self.workers}
        if len(layouts) > 1:
            described = ", ".join(f"{w.id}: {w.info.model_id}" for w in self.workers)
            raise RuntimeError(f"workers serve different models or KV page layouts ({described})")
