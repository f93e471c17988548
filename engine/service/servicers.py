"""The gRPC faces of the workers: ``PrefillService`` and ``DecodeService``.

Thin: decode the request, call the worker or engine, encode. Errors are raised, and
``engine.service.errors`` turns them into statuses (with the failing role and the kind
of error as trailing metadata): bad requests INVALID_ARGUMENT with a message saying what
is wrong; a prefill worker running another model or page layout than the decode worker
FAILED_PRECONDITION; a missing or failing peer UNAVAILABLE; a full KV cache
RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable

import grpc

from engine.core import Engine
from engine.roles import WorkerRole
from engine.sampling import SamplingParams
from engine.service.codec import params_from_pb, target_from_pb
from engine.service.errors import GenerationFailed, WrongNamespace, worker_errors
from engine.tokenizer import Tokenizer
from engine.workers.prefill import PrefillWorker
from engine.workers.requests import FinishReason, InvalidRequest
from kvstore._proto.strata.v1 import engine_pb2, engine_pb2_grpc
from kvstore.client import StoreClient
from kvstore.errors import KVStoreError
from kvstore.hashing import Namespace

StatsFn = Callable[[], dict[str, object]]


class PrefillServicer(engine_pb2_grpc.PrefillServiceServicer):
    def __init__(
        self, worker: PrefillWorker, stats: StatsFn, store: StoreClient | None = None
    ) -> None:
        self.worker = worker
        self._stats = stats
        self._store = store
        self._store_node_id = ""

    @worker_errors(WorkerRole.PREFILL)
    async def Info(
        self, request: engine_pb2.WorkerInfoRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.WorkerInfo:
        if self._store is not None and not self._store_node_id:
            with contextlib.suppress(KVStoreError):
                self._store_node_id = (await self._store.stats()).node_id
        cache = self.worker.cache
        return engine_pb2.WorkerInfo(
            role=WorkerRole.PREFILL.value,
            model_id=self.worker.namespace.model_id,
            namespace_id=self.worker.namespace.id,
            page_tokens=cache.page_tokens,
            store_address=self._store.address if self._store else "",
            store_node_id=self._store_node_id,
            kv_pages_total=cache.num_pages,
            kv_pages_free=cache.num_free,
            queued=self.worker.num_queued,
        )

    @worker_errors(WorkerRole.PREFILL)
    async def Prefill(
        self, request: engine_pb2.PrefillRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.PrefillResponse:
        namespace = self.worker.namespace
        if request.namespace_id != namespace.id:
            raise WrongNamespace(
                f"the decode worker's namespace {request.namespace_id.hex()} is not this"
                f" prefill worker's {namespace.id.hex()} ({namespace.model_id}): model or"
                " KV page layout differ"
            )
        if not request.HasField("target") or not request.target.pages:
            raise InvalidRequest("target: pages are required")
        params = params_from_pb(request.sampling)
        # a KVStoreError here: the decode worker could not be reached (UNAVAILABLE)
        result = await self.worker.prefill(
            list(request.prompt_token_ids),
            params,
            target_from_pb(request.target),
            cache_salt=request.cache_salt,
            profiling=request.profiling,
        )
        return engine_pb2.PrefillResponse(
            first_token=result.first_token,
            cached_local_tokens=result.cached_local_tokens,
            cached_store_tokens=result.cached_store_tokens,
            cached_remote_tokens=result.cached_remote_tokens,
            computed_tokens=result.computed_tokens,
            queue_s=result.queue_s,
            compute_s=result.compute_s,
        )

    @worker_errors(WorkerRole.PREFILL)
    async def EndProfiling(
        self, request: engine_pb2.EndProfilingRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.EndProfilingResponse:
        return engine_pb2.EndProfilingResponse(removed_blocks=await self.worker.end_profiling())

    @worker_errors(WorkerRole.PREFILL)
    async def Stats(
        self, request: engine_pb2.EngineStatsRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.EngineStatsResponse:
        return engine_pb2.EngineStatsResponse(json=json.dumps(self._stats()))


class DecodeServicer(engine_pb2_grpc.DecodeServiceServicer):
    def __init__(self, engine: Engine, tokenizer: Tokenizer, namespace: Namespace) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.namespace = namespace

    @worker_errors(WorkerRole.DECODE)
    async def Info(
        self, request: engine_pb2.WorkerInfoRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.WorkerInfo:
        decode = self.engine.decode
        return engine_pb2.WorkerInfo(
            role=WorkerRole.DECODE.value,
            model_id=self.namespace.model_id,
            namespace_id=self.namespace.id,
            page_tokens=decode.cache.page_tokens,
            kv_pages_total=decode.cache.num_pages,
            kv_pages_free=decode.cache.num_free,
            running=decode.num_running,
            max_batch=decode.max_batch,
        )

    @worker_errors(WorkerRole.DECODE)
    async def Generate(
        self, request: engine_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[engine_pb2.GenerateChunk]:
        if request.prompt_token_ids and request.prompt:
            raise InvalidRequest("give prompt_token_ids or prompt, not both")
        tokens = list(request.prompt_token_ids) or self.tokenizer.encode(request.prompt)
        params = (
            params_from_pb(request.sampling) if request.HasField("sampling") else SamplingParams()
        )
        generation = self.engine.new_request(tokens, params, request.request_id or None)
        generation.prefill_address = request.prefill_address
        generation.cache_salt = request.cache_salt
        generation.profiling = request.profiling
        first = True
        # PrefillUnavailable (no prefill worker could) and NoRoom (no KV room in time)
        # come out of the stream before its first event
        async for event in self.engine.stream(generation):
            if event.finish_reason is FinishReason.ERROR:
                raise GenerationFailed(event.error)
            chunk = engine_pb2.GenerateChunk(
                request_id=event.request_id,
                token_ids=event.token_ids,
                text=event.text,
                finish_reason=event.finish_reason.value if event.finish_reason else "",
            )
            if first:
                chunk.prompt_tokens = len(tokens)
                prefilled = generation.prefilled
                if prefilled is not None:
                    chunk.cached_tokens = prefilled.cached_tokens
                    chunk.cached_remote_tokens = prefilled.cached_remote_tokens
                    chunk.cached_store_tokens = prefilled.cached_store_tokens
                    chunk.prefill_queue_s = prefilled.queue_s
                    chunk.prefill_compute_s = prefilled.compute_s
                first = False
            yield chunk

    @worker_errors(WorkerRole.DECODE)
    async def Stats(
        self, request: engine_pb2.EngineStatsRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.EngineStatsResponse:
        return engine_pb2.EngineStatsResponse(json=json.dumps(self.engine.stats()))
