"""One generation, end to end: prefill (here or in another process), then decode here.

``Engine.stream`` is what every front end drives (``LLM``, the decode worker's gRPC
service): prefill the prompt, hand its pages and first token to the decode worker, and
yield the tokens as they come. Prefill is pluggable:

- ``LocalPrefill``: a prefill worker in this process sharing the decode worker's paged
  cache; the prompt's pages change hands without a copy (the single-machine default).
- ``RemotePrefill`` (``engine.service``): a prefill worker in another process writes the
  prompt's KV into pages this process reserved, layer by layer, over the transfer engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
from collections.abc import AsyncGenerator
from typing import Protocol

from engine.sampling import SamplingParams
from engine.workers.decode import DecodeWorker
from engine.workers.prefill import PrefillWorker
from engine.workers.requests import (
    FinishReason,
    GenerationRequest,
    PrefillResult,
    TokenEvent,
    check_prompt,
)


class Prefill(Protocol):
    async def prefill(self, request: GenerationRequest) -> PrefillResult:
        """Prefill the request's prompt into pages of the decode worker's cache (the
        result's ``pages``, now the caller's)."""
        ...

    def stats(self) -> dict[str, object]: ...


class LocalPrefill:
    def __init__(self, worker: PrefillWorker) -> None:
        self.worker = worker

    async def prefill(self, request: GenerationRequest) -> PrefillResult:
        future = self.worker.submit(
            request.prompt_token_ids,
            request.params,
            cache_salt=request.cache_salt,
            profiling=request.profiling,
        )
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:  # the caller left: free the pages when they come
            future.add_done_callback(self._release)
            raise

    def _release(self, future: concurrent.futures.Future[PrefillResult]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.worker.cache.release(future.result().pages)

    def stats(self) -> dict[str, object]:
        out: dict[str, object] = {**self.worker.stats.as_dict()}
        if self.worker.store is not None:
            out["store"] = self.worker.store.stats.as_dict()
        out["prefix_cache_pages"] = len(self.worker.prefix)
        return out


class Engine:
    def __init__(
        self,
        prefill: Prefill,
        decode: DecodeWorker,
        *,
        eos_token_ids: tuple[int, ...] = (),
    ) -> None:
        self.prefill = prefill
        self.decode = decode
        self.eos_token_ids = eos_token_ids
        self._ids = itertools.count()
        self._prefix = os.urandom(4).hex()

    def new_request(
        self, tokens: list[int], params: SamplingParams, request_id: str | None = None
    ) -> GenerationRequest:
        """A checked request (raises ``InvalidRequest`` saying what is wrong)."""
        config = self.decode.model.config
        check_prompt(
            tokens, vocab_size=config.vocab_size, max_context=config.max_position_embeddings
        )
        rid = request_id or f"req-{self._prefix}-{next(self._ids)}"
        return GenerationRequest(rid, tokens, params, self.eos_token_ids)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        """The request's tokens as they are generated; the last event has a finish
        reason. Leaving the iteration early cancels the request and frees its pages."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        result = await self.prefill.prefill(request)
        request.prefilled = result

        def emit(event: TokenEvent) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        self.decode.admit(request, result.pages, result.first_token, emit)
        finished = False
        try:
            while not finished:
                event = await events.get()
                finished = event.finish_reason is not None
                yield event
        finally:
            if not finished:
                self.decode.cancel(request.request_id)

    async def generate(self, request: GenerationRequest) -> tuple[list[int], str, FinishReason]:
        """The whole generation at once: (token ids, text, finish reason)."""
        tokens: list[int] = []
        pieces: list[str] = []
        reason = FinishReason.ERROR
        async for event in self.stream(request):
            tokens.extend(event.token_ids)
            pieces.append(event.text)
            if event.finish_reason is FinishReason.ERROR:
                raise RuntimeError(f"generation failed: {event.error}")
            if event.finish_reason is not None:
                reason = event.finish_reason
        return tokens, "".join(pieces), reason

    def stats(self) -> dict[str, object]:
        cache = self.decode.cache
        return {
            "prefill": self.prefill.stats(),
            "decode": self.decode.stats.as_dict(),
            "write_back": self.decode.write_back.stats if self.decode.write_back else {},
            "kv_pages": {"total": cache.num_pages, "free": cache.num_free},
        }
