"""Prefill in another process, into this process's pages (the decode worker's side).

For each request: reserve pages of the decode worker's cache for the whole sequence (the
prompt and ``max_tokens``, within the context; so a running sequence never runs out of
pages mid-stream), ask a prefill worker (``PrefillService.Prefill``) to fill the prompt's
through the data plane, and take the pages back with the first token. When the cache
has no room for that long (``page_wait_s``), the request is refused (``NoRoom``): the
decode worker is busy, not broken. Pages a prefill worker may still be writing
are never reused early: a caller that leaves mid-prefill gets its pages freed when the
prefill answers, and a prefill that failed or timed out leaves its pages quarantined for
a while (the worker might still be writing them) before they are freed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Sequence

import grpc

from engine.errors import EngineError
from engine.kv.cache import PagedKVCache
from engine.kv.page_reservations import PageReservations
from engine.service.codec import params_to_pb, target_to_pb
from engine.workers.requests import GenerationRequest, InvalidRequest, KVTarget, PrefillResult
from kvstore._proto.strata.v1 import engine_pb2, engine_pb2_grpc
from kvstore.access import bearer_metadata
from kvstore.hashing import Namespace


class PrefillUnavailable(EngineError):
    """No prefill worker could prefill the request."""


class RemotePrefill:
    def __init__(
        self,
        addresses: Sequence[str],
        cache: PagedKVCache,
        namespace: Namespace,
        data_plane: Sequence[str],
        *,
        max_context: int,
        token: str = "",
        timeout_s: float = 120.0,
        page_wait_s: float = 30.0,
        landed: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``landed(transfer_id)`` is told when a transfer into our pages has ended."""
        if not addresses:
            raise ValueError("no prefill worker addresses")
        self.cache = cache
        self.namespace = namespace
        self.max_context = max_context
        self._data_plane = tuple(data_plane)
        self._metadata = bearer_metadata(token)
        self._timeout_s = timeout_s
        self._page_wait_s = page_wait_s
        self._landed = landed
        self._channels = [grpc.aio.insecure_channel(a) for a in addresses]
        self._stubs = {
            a: engine_pb2_grpc.PrefillServiceStub(c)
            for a, c in zip(addresses, self._channels, strict=True)
        }
        self._next = itertools.cycle(list(addresses))
        self._transfer_ids = itertools.count(int.from_bytes(os.urandom(4), "little") << 20)
        self._counts = {"requests": 0, "failures": 0}
        self.pages = PageReservations(cache, quarantine_s=2 * timeout_s, clock=clock)

    async def prefill(self, request: GenerationRequest) -> PrefillResult:
        """Prefill on the request's ``prefill_address`` (a router's choice) or on the
        next worker in turn."""
        address = request.prefill_address or next(self._next)
        stub = self._stubs.get(address) or self._add(address)
        num_tokens = len(request.prompt_token_ids)
        prompt_pages = self.cache.pages_for(num_tokens)
        if prompt_pages > self.cache.num_pages:
            raise InvalidRequest(
                f"prompt needs {prompt_pages} KV pages; the decode worker's cache has"
                f" {self.cache.num_pages}"
            )
        needed = self.cache.pages_to_finish(num_tokens, request.params.max_tokens, self.max_context)
        pages = await self.pages.allocate(needed, self._page_wait_s)
        target = KVTarget(self._data_plane, tuple(pages[:prompt_pages]), next(self._transfer_ids))
        transfer_id = target.transfer_id
        call = asyncio.ensure_future(
            stub.Prefill(
                engine_pb2.PrefillRequest(
                    prompt_token_ids=request.prompt_token_ids,
                    sampling=params_to_pb(request.params),
                    target=target_to_pb(target),
                    namespace_id=self.namespace.id,
                    cache_salt=request.cache_salt,
                    profiling=request.profiling,
                ),
                timeout=self._timeout_s,
                metadata=self._metadata,
            )
        )
        self._counts["requests"] += 1
        landed = self._landed
        if landed is not None:
            call.add_done_callback(lambda _: landed(transfer_id))
        try:
            response = await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(lambda done: self._settle(done, pages))
            raise
        except grpc.aio.AioRpcError as exc:
            self._counts["failures"] += 1
            self.pages.quarantine(pages)
            if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidRequest(exc.details() or "invalid request") from None
            raise PrefillUnavailable(
                f"prefill worker {address}: {exc.details() or exc.code().name}"
            ) from None
        self.cache.land(target.pages)  # every layer has arrived: the answer came after them
        return PrefillResult(
            first_token=response.first_token,
            pages=pages,
            cached_local_tokens=response.cached_local_tokens,
            cached_store_tokens=response.cached_store_tokens,
            cached_remote_tokens=response.cached_remote_tokens,
            computed_tokens=response.computed_tokens,
            queue_s=response.queue_s,
            compute_s=response.compute_s,
        )

    def stats(self) -> dict[str, object]:
        return {
            "remote": list(self._stubs),
            **self._counts,
            "quarantined_pages": self.pages.quarantined_pages,
        }

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    def _add(self, address: str) -> engine_pb2_grpc.PrefillServiceStub:
        channel = grpc.aio.insecure_channel(address)
        self._channels.append(channel)
        self._stubs[address] = engine_pb2_grpc.PrefillServiceStub(channel)
        return self._stubs[address]

    def _settle(self, call: asyncio.Future[engine_pb2.PrefillResponse], pages: list[int]) -> None:
        if not call.cancelled() and call.exception() is None:
            self.cache.release(pages)
        else:
            self.pages.quarantine(pages)
