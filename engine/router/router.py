"""The router: choose where each request runs, run it there, keep the accounts.

``place`` asks the global view how much of the prompt each prefill worker's node holds,
snapshots the workers' load, and lets the policy decide (or reject: ``Overloaded``, which
the HTTP layer answers with 429 before any prefill work). ``stream`` then asks the chosen
decode worker to generate with the chosen prefill worker, yielding chunks as they come.

A worker that fails a request before its first token is marked down and the request is
placed again without it (once), so a killed prefill worker is routed around; after the
first token a failure ends the stream with the error. Which worker failed is read from the
status's structured detail (``engine.service.errors``: the failing role), never from its
message; a status without one means the decode worker itself did not answer. A decode
worker whose KV cache has no room (``no_room``) is busy, not down: the request is
``Overloaded``. While a role has no healthy worker at all, waiting will not help by
itself: ``place`` raises ``NoHealthyWorker`` (HTTP 503), logged once per outage, not
``Overloaded`` (429).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc

from engine.errors import EngineError
from engine.roles import WorkerRole
from engine.router.costs import CostModel
from engine.router.global_view import GlobalView
from engine.router.metrics import RouterMetrics
from engine.router.views import (
    Decision,
    DecodeView,
    Policy,
    PrefillView,
    Rejection,
    RequestView,
)
from engine.router.workers import Worker, WorkerPool
from engine.sampling import SamplingParams
from engine.service.codec import params_to_pb
from engine.service.errors import ErrorKind, failure_of
from kvstore._proto.strata.v1 import engine_pb2, engine_pb2_grpc
from kvstore.access import bearer_metadata
from kvstore.hashing import prefix_keys
from kvstore.types import BlockKey, NamespaceId

logger = logging.getLogger(__name__)
DECODE_FULL_RETRY_S = 1.0  # a decode worker had no KV room: a sequence must finish first


class Overloaded(EngineError):
    """No placement meets the SLOs: retry after ``retry_after_s``."""

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class WorkerFailed(EngineError):
    """The workers could not run the request (the message says which and why)."""


class NoHealthyWorker(WorkerFailed):
    """No healthy worker of a role (prefill or decode) is left to run the request."""


class BadRequest(EngineError):
    """A worker refused the request as invalid (the message says why)."""


@dataclass
class Placement:
    tokens: list[int]
    keys: list[BlockKey]
    decision: Decision
    prefill: Worker
    decode: Worker
    prefill_s: float  # the prefill work this placement adds to its worker's queue
    decided_s: float  # when it was decided (perf_counter)
    cache_salt: str = ""  # the request's: its keys, and the workers', start from it


@dataclass
class Chunk:
    token_ids: list[int]
    text: str
    finish_reason: str
    cached_tokens: int  # on the first chunk
    prefill: str  # the prefill worker that served the request
    cached_remote_tokens: int = 0  # on the first chunk: reused from another worker's node
    prefill_queue_s: float = 0.0  # on the first chunk: its wait at the prefill worker
    prefill_compute_s: float = 0.0  # on the first chunk: its prefill there (admission to end)


class Router:
    def __init__(
        self,
        pool: WorkerPool,
        view: GlobalView,
        policy: Policy,
        costs: CostModel,
        *,
        namespace_id: NamespaceId,
        block_tokens: int,
        token: str = "",
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.pool = pool
        self.view = view
        self.policy = policy
        self.costs = costs
        self.namespace_id = namespace_id
        self.block_tokens = block_tokens
        self.metrics = metrics or RouterMetrics()
        self.counts: Counter[str] = Counter()
        self._metadata = bearer_metadata(token)
        self._missing: WorkerRole | None = None  # the role with no healthy worker, once logged

    async def place(
        self,
        tokens: list[int],
        max_tokens: int,
        exclude: Sequence[str] = (),
        cache_salt: str = "",
    ) -> Placement:
        start = time.perf_counter()
        keys = prefix_keys(self.namespace_id, tokens, self.block_tokens, cache_salt=cache_salt)
        prefix = await self.view.prefix_blocks(keys)
        request = RequestView(len(tokens), self.block_tokens, prefix, max_tokens)
        prefills = [v for v in self.pool.prefill_views() if v.id not in exclude]
        decodes = [v for v in self.pool.decode_views() if v.id not in exclude]
        self._check_available(prefills, decodes)
        choice = self.policy.choose(request, prefills, decodes, time.monotonic())
        self.metrics.decision.observe(time.perf_counter() - start)
        if isinstance(choice, Rejection):
            self.counts["rejected"] += 1  # the HTTP layer's 429 counts the metric
            raise Overloaded(choice.reason, choice.retry_after_s)
        prefill, decode = self.pool.prefill[choice.prefill], self.pool.decode[choice.decode]
        cached = (choice.local_blocks + choice.pulled_blocks) * self.block_tokens
        prefill_s = self.costs.prefill_s(len(tokens) - cached, cached)
        self.counts["placed"] += 1
        self.counts["pulled_blocks"] += choice.pulled_blocks
        self.metrics.queue.observe(prefill.queued_s)
        return Placement(tokens, keys, choice, prefill, decode, prefill_s, start, cache_salt)

    async def stream(
        self,
        tokens: list[int],
        params: SamplingParams,
        request_id: str = "",
        placement: Placement | None = None,
        cache_salt: str = "",
    ) -> AsyncIterator[Chunk]:
        """Run a request where ``placement`` says (placing it first if not given);
        retries once elsewhere if a worker fails before the first token. Raises
        ``Overloaded``, ``BadRequest`` or ``WorkerFailed``."""
        placement = placement or await self.place(tokens, params.max_tokens, cache_salt=cache_salt)
        tried: list[str] = []
        while True:
            try:
                async for chunk in self._run(placement, params, request_id):
                    yield chunk
                return
            except _NotStarted as exc:
                failed = exc.worker
                self.pool.mark_down(failed, str(exc))
                tried.append(failed.id)
                self.counts["retried"] += 1
                if len(tried) > 1:
                    raise WorkerFailed(str(exc)) from None
                placement = await self.place(
                    tokens, params.max_tokens, exclude=tried, cache_salt=placement.cache_salt
                )

    async def _run(
        self, placement: Placement, params: SamplingParams, request_id: str
    ) -> AsyncIterator[Chunk]:
        prefill, decode = placement.prefill, placement.decode
        prefill.queued_s += placement.prefill_s
        decode.running += 1
        decode.context_tokens += len(placement.tokens)
        context = len(placement.tokens)
        pending_prefill = placement.prefill_s
        stub = engine_pb2_grpc.DecodeServiceStub(decode.channel)
        call = stub.Generate(
            engine_pb2.GenerateRequest(
                request_id=request_id,
                prompt_token_ids=placement.tokens,
                sampling=params_to_pb(params),
                prefill_address=prefill.address,
                cache_salt=placement.cache_salt,
            ),
            metadata=self._metadata,
        )
        started = False
        last = time.perf_counter()
        try:
            async for chunk in call:
                now = time.perf_counter()
                if not started:
                    started = True
                    prefill.queued_s = max(0.0, prefill.queued_s - pending_prefill)
                    pending_prefill = 0.0
                    full = len(placement.tokens) // self.block_tokens
                    self.view.placed(prefill.id, placement.keys[:full])
                    self.metrics.ttft.observe(now - placement.decided_s)
                    self.metrics.count_prompt(
                        len(placement.tokens),
                        chunk.cached_tokens,
                        chunk.cached_store_tokens,
                        chunk.cached_remote_tokens,
                    )
                else:
                    self.metrics.itl.observe(now - last)
                last = now
                context += len(chunk.token_ids)
                decode.context_tokens += len(chunk.token_ids)
                self.metrics.generated_tokens.inc(len(chunk.token_ids))
                yield Chunk(
                    list(chunk.token_ids),
                    chunk.text,
                    chunk.finish_reason,
                    chunk.cached_tokens,
                    prefill.id,
                    chunk.cached_remote_tokens,
                    chunk.prefill_queue_s,
                    chunk.prefill_compute_s,
                )
        except grpc.aio.AioRpcError as exc:
            failure = failure_of(exc)
            if failure.code is grpc.StatusCode.INVALID_ARGUMENT:
                raise BadRequest(failure.message) from None
            if not started and failure.kind is ErrorKind.NO_ROOM:
                self.counts["rejected"] += 1
                raise Overloaded(failure.message, DECODE_FULL_RETRY_S) from None
            if not started and failure.code is grpc.StatusCode.UNAVAILABLE:
                # no role said: the decode worker itself did not answer
                blamed = prefill if failure.role is WorkerRole.PREFILL else decode
                raise _NotStarted(blamed, failure.message) from None
            raise WorkerFailed(f"decode worker {decode.id}: {failure.message}") from None
        finally:
            call.cancel()  # a no-op once finished; else the decode worker stops
            prefill.queued_s = max(0.0, prefill.queued_s - pending_prefill)
            decode.running -= 1
            decode.context_tokens -= context

    def _check_available(
        self, prefills: Sequence[PrefillView], decodes: Sequence[DecodeView]
    ) -> None:
        """Raise ``NoHealthyWorker`` while a role has no healthy worker; log changes."""
        missing = next(
            (
                role
                for role, views in ((WorkerRole.PREFILL, prefills), (WorkerRole.DECODE, decodes))
                if not any(v.healthy for v in views)
            ),
            None,
        )
        if missing != self._missing:
            if missing is None:
                logger.warning("a healthy %s worker is back: serving again", self._missing)
            else:
                logger.warning("no healthy %s worker: answering 503 until one is back", missing)
            self._missing = missing
        if missing is not None:
            self.counts["unavailable"] += 1
            raise NoHealthyWorker(f"no healthy {missing} worker; retry shortly")

    def stats(self) -> dict[str, object]:
        return {
            "policy": self.policy.name,
            **dict(self.counts),
            "lookups": dict(self.view.lookups),
            "workers": {
                w.id: {
                    "role": w.role,
                    "healthy": w.healthy,
                    "queued_s": round(w.queued_s, 4),
                    "running": w.running,
                }
                for w in self.pool.workers
            },
        }


class _NotStarted(EngineError):
    def __init__(self, worker: Worker, message: str) -> None:
        super().__init__(message)
        self.worker = worker
