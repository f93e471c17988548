"""The prefill worker: prompts in, first tokens and KV out.

For each prompt, on its own compute thread:

1. split the prompt into store blocks and reuse what is cached: first this worker's own
   prefix cache (pages shared, no copy), then the store (a layer-wise load straight into
   fresh pages). At least the last prompt token is always computed (its logits give the
   first output token).
2. compute the rest in chunks of ``chunk_tokens``, several prompts per forward pass. Layer
   i of the loaded prefix is awaited just before layer i runs, so loading overlaps compute.
   A prompt whose last chunk ran is finished (step 4) at once: a short prompt batched
   with long ones does not wait for them; prompts that arrive meanwhile join between
   forward passes while the batch has room.
3. after layer i, send layer i of every block this chunk completed to the store (a
   layer-wise put, committed once the prompt is done and its loads verified), and, when
   decode runs in another process, layer i of every finished page to the decode worker's
   pages (``KVTarget``), while layer i + 1 computes.
4. commit the write-back, sample the first token, remember the prompt's full pages in
   the prefix cache, and hand the pages over: in one process the caller takes the pages
   themselves; otherwise they have already been written to the decode worker.

A cached block that fails its checksum is never used: its prompt is computed again from
that block on. A store that cannot be reached costs nothing but the reuse.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import torch

from engine.kv.cache import CacheFull, PagedKVCache
from engine.kv.connector import StoreConnector
from engine.kv.host_pages import HostPages
from engine.kv.prefix_cache import PrefixCache
from engine.model.llama import LlamaForCausalLM, SeqSlice
from engine.sampling import SamplingParams, sample
from engine.workers.device import Device
from engine.workers.prefill_state import (
    Job,
    PrefillStats,
    PromptState,
    Put,
    StepHooks,
    remote_blocks,
)
from engine.workers.requests import InvalidRequest, KVTarget, PrefillResult, check_prompt
from kvstore.client.layered import layer_slice
from kvstore.hashing import Namespace, prefix_keys
from kvstore.transfer.engine import TransferEngine
from kvstore.transfer.transports import RangeWrite

logger = logging.getLogger(__name__)
T = TypeVar("T")


class PrefillWorker:
    def __init__(
        self,
        model: LlamaForCausalLM,
        cache: PagedKVCache,
        *,
        loop: asyncio.AbstractEventLoop,
        connector: StoreConnector | None = None,
        transfer: TransferEngine | None = None,
        chunk_tokens: int = 512,
        max_batch_tokens: int = 2048,
        prefix_caching: bool = True,
        device: Device | None = None,
    ) -> None:
        """``device``: shared with a decode worker of this process (colocated)."""
        self.model = model
        self.cache = cache
        self.connector = connector
        self.namespace = (
            connector.namespace if connector else Namespace(model.config.model_id, cache.spec)
        )
        self.prefix = PrefixCache(cache, enabled=prefix_caching)
        self.stats = PrefillStats()
        self.device = device or Device()
        self._loop = loop
        self._transfer = transfer
        self._chunk = chunk_tokens
        self._batch_tokens = max_batch_tokens
        self._pending: deque[Job] = deque()
        self._active = 0  # prompts of the batch being prefilled
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="strata-prefill", daemon=True)

    # -- the worker's surface ---------------------------------------------------------

    def start(self) -> PrefillWorker:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        for job in self._pending:
            job.future.set_exception(RuntimeError("prefill worker stopped"))
        self._pending.clear()
        self.prefix.clear()

    def submit(
        self,
        tokens: Sequence[int],
        params: SamplingParams,
        target: KVTarget | None = None,
        cache_salt: str = "",
    ) -> concurrent.futures.Future[PrefillResult]:
        """Prefill ``tokens`` (thread-safe). Raises ``InvalidRequest`` for a prompt that
        can never run; the future fails if the prefill does."""
        config = self.model.config
        check_prompt(
            tokens, vocab_size=config.vocab_size, max_context=config.max_position_embeddings
        )
        needed = self.cache.pages_for(len(tokens))
        if needed > self.cache.num_pages:
            raise InvalidRequest(
                f"prompt needs {needed} KV pages; the prefill worker's cache has"
                f" {self.cache.num_pages}"
            )
        if target is not None and len(target.pages) != needed:
            raise InvalidRequest(f"target has {len(target.pages)} pages; the prompt needs {needed}")
        job = Job(list(tokens), params, target, concurrent.futures.Future(), cache_salt=cache_salt)
        with self._wake:
            if self._stopping:
                raise RuntimeError("prefill worker stopped")
            self._pending.append(job)
            self._wake.notify()
        return job.future

    async def prefill(
        self,
        tokens: Sequence[int],
        params: SamplingParams,
        target: KVTarget | None = None,
        cache_salt: str = "",
    ) -> PrefillResult:
        return await asyncio.wrap_future(self.submit(tokens, params, target, cache_salt))

    @property
    def num_queued(self) -> int:
        """Prompts waiting or being prefilled."""
        return len(self._pending) + self._active

    # -- the compute thread -----------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._wake:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
            states = self._admit_batch(self._batch_tokens)
            if not states:
                time.sleep(0.005)  # the cache is full of running requests: wait for pages
                continue
            self._active = len(states)
            try:
                self._prefill(states)
            except Exception as exc:  # a bug or a device error: fail these requests only
                logger.exception("prefill failed")
                for state in states:
                    self._drop(state)
                    if not state.job.future.done():
                        state.job.future.set_exception(exc)
            finally:
                self._active = 0

    def _admit_batch(self, budget: int) -> list[PromptState]:
        """Pending prompts, up to ``budget`` tokens to compute (at least one prompt while
        the budget is positive)."""
        states: list[PromptState] = []
        tokens = 0
        while True:
            with self._wake:
                if not self._pending or budget <= 0 or (states and tokens >= budget):
                    return states
                job = self._pending.popleft()
            try:
                state = self._admit(job)
            except CacheFull:
                with self._wake:
                    self._pending.appendleft(job)
                return states
            except Exception as exc:
                job.future.set_exception(exc)
                continue
            states.append(state)
            tokens += len(job.tokens) - state.reused_tokens

    def _admit(self, job: Job) -> PromptState:
        page_tokens = self.cache.page_tokens
        keys = prefix_keys(self.namespace.id, job.tokens, page_tokens, cache_salt=job.cache_salt)
        reusable = (len(job.tokens) - 1) // page_tokens  # the last token is always computed
        local = self.prefix.match(keys[:reusable])
        try:
            fresh = self.prefix.allocate(self._pages_needed(job) - len(local))
        except CacheFull:
            self.cache.release(local)
            raise
        pages = local + fresh
        host = HostPages(self.cache, pages)
        want = keys[len(local) : reusable]
        if job.store_limit is not None:
            want = want[: max(0, job.store_limit - len(local))]
        load = None
        if self.connector is not None and want:
            dsts = host.blocks[len(local) : len(local) + len(want)]
            load = self._call(self.connector.load(want, dsts))
        peer = None
        if job.target is not None:
            if self._transfer is None:
                raise RuntimeError("this prefill worker has no transfer engine for KV targets")
            peer = self._call(self._transfer.connect(job.target.addresses))
        state = PromptState(
            job,
            keys,
            pages,
            host,
            local_blocks=len(local),
            store_blocks=load.num_hits if load else 0,
            remote_blocks=remote_blocks(load, self.connector),
            load=load,
            peer=peer,
            admitted_s=time.perf_counter(),
        )
        state.position = state.reused_tokens
        state.loading = load is not None
        return state

    def _pages_needed(self, job: Job) -> int:
        """The prompt's pages; for pages that stay in this process (a decode worker here
        takes them), room for the whole sequence too, so that it never runs out of pages
        mid-stream."""
        if job.target is not None:
            return self.cache.pages_for(len(job.tokens))
        context = self.model.config.max_position_embeddings
        return self.cache.pages_to_finish(len(job.tokens), job.params.max_tokens, context)

    def _prefill(self, states: list[PromptState]) -> None:
        """Run ``states`` to their first tokens; prompts that arrive meanwhile join
        between forward passes while fewer than ``max_batch_tokens`` tokens are left to
        compute (``states`` grows: whoever handles a failure sees them too)."""
        while True:
            active = [s for s in states if s.position < len(s.job.tokens)]
            left = sum(len(s.job.tokens) - s.position for s in active)
            joined = self._admit_batch(self._batch_tokens - left) if active else []
            states += joined
            active += joined
            if not active:
                return
            self._active = len(active)
            budget, step = self._batch_tokens, []
            for state in active:
                n = min(self._chunk, len(state.job.tokens) - state.position, budget)
                if n > 0:
                    step.append((state, n))
                    budget -= n
            hooks = StepHooks(self, step, self._open_puts(step))
            slices = [
                SeqSlice(
                    torch.tensor(s.job.tokens[s.position : s.position + n]), s.position, s.pages
                )
                for s, n in step
            ]
            with self.device.turn():
                logits = self.model(slices, self.cache, hooks=hooks)
            self.stats.forward_passes += 1
            done = []
            for (state, n), out in zip(step, logits, strict=True):
                state.position += n
                state.loading = False
                state.pushed_pages = hooks.pushed_upto[id(state)]
                if state.position == len(state.job.tokens):
                    state.logits = out
                    done.append(state)
            for state in done:  # its first token goes out now, not when the batch ends
                self._finish(state, time.perf_counter() - state.admitted_s)

    def _open_puts(self, step: Sequence[tuple[PromptState, int]]) -> dict[int, Put]:
        """Layer-wise puts of the blocks each prompt completes in this step."""
        puts: dict[int, Put] = {}
        if self.connector is None:
            return puts
        page_tokens = self.cache.page_tokens
        for state, n in step:
            first, last = state.position // page_tokens, (state.position + n) // page_tokens
            if last <= first:
                continue
            parent = state.keys[first - 1] if first else None
            put = self._call(
                self.connector.save(state.keys[first:last], state.host.blocks[first:last], parent)
            )
            if put is not None:
                puts[id(state)] = Put(first, put)
                state.puts.append(puts[id(state)])
        return puts

    def _finish(self, state: PromptState, compute_s: float) -> None:
        job = state.job
        verified = state.store_blocks
        if state.load is not None:
            verified = 0 if state.load_failed else self._call(state.load.verified())
        if verified < state.store_blocks:  # never serve what the store got wrong
            self.stats.recomputed_requests += 1
            if self.connector is not None:
                self.connector.corrupted(state.store_blocks - verified)
            self._drop(state)
            job.store_limit = state.local_blocks + verified
            with self._wake:
                self._pending.appendleft(job)
            return
        self._commit_puts(state)
        self._call(_gather(state.pushes))  # raises if the decode worker did not get the KV
        state.pushes = []
        full = len(job.tokens) // self.cache.page_tokens
        self.prefix.insert(state.keys[:full], state.pages[:full])
        assert state.logits is not None
        first_token = sample(state.logits, job.params, 0)
        reused = state.reused_tokens
        self.stats.requests += 1
        self.stats.prompt_tokens += len(job.tokens)
        self.stats.computed_tokens += len(job.tokens) - reused
        self.stats.cached_local_tokens += state.local_blocks * self.cache.page_tokens
        self.stats.cached_store_tokens += state.store_blocks * self.cache.page_tokens
        pages, state.pages = state.pages, []
        if job.target is not None:
            self.cache.release(pages)
            pages = []
        job.future.set_result(
            PrefillResult(
                first_token=first_token,
                pages=pages,
                num_prompt_tokens=len(job.tokens),
                cached_local_tokens=state.local_blocks * self.cache.page_tokens,
                cached_store_tokens=state.store_blocks * self.cache.page_tokens,
                cached_remote_tokens=state.remote_blocks * self.cache.page_tokens,
                computed_tokens=len(job.tokens) - reused,
                queue_s=state.admitted_s - job.submitted_s,
                compute_s=compute_s,
            )
        )

    def _commit_puts(self, state: PromptState) -> None:
        """Commit the write-back before the first token goes out: its layers are already
        in the store's arena, so this is one small round trip per chunk, and a router that
        sees the first token can count on the store holding the prompt's blocks."""
        connector = self.connector
        if connector is None or not state.puts:
            return
        puts, state.puts = state.puts, []

        async def commit() -> None:
            for p in puts:
                await connector.commit(p.put)

        self._call(commit())

    def _drop(self, state: PromptState) -> None:
        """Undo a prompt's transfers (waiting for those still writing its pages), then
        free its pages."""
        for p in state.puts:
            asyncio.run_coroutine_threadsafe(p.put.abort(), self._loop)
        state.puts = []
        if state.load is not None:
            self._call(_settle(state.load.verified()))
        self._call(_gather(state.pushes, quiet=True))
        state.pushes = []
        if state.pages:
            self.cache.release(state.pages)
            state.pages = []

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the worker's loop and wait for it (from the compute thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- used by the hooks (compute thread) -------------------------------------------

    def _push_layer(self, state: PromptState, layer: int, indices: range) -> None:
        """Send layer ``layer`` of the state's pages at ``indices`` to its KV target."""
        target, peer = state.job.target, state.peer
        assert target is not None and peer is not None
        state.host.to_host(layer, indices)
        layers = self.cache.num_layers
        layer_bytes = self.cache.page_bytes // layers
        writes = [
            RangeWrite(
                target.segment,
                target.pages[i] * self.cache.page_bytes + layer * layer_bytes,
                layer_slice(state.host.blocks[i], layer, layers),
            )
            for i in indices
        ]

        def start() -> None:
            state.pushes.append(
                asyncio.ensure_future(
                    peer.transport.write_ranges(target.transfer_id, layer, writes)
                )
            )

        self._loop.call_soon_threadsafe(start)


async def _gather(futures: Sequence[asyncio.Future[None]], *, quiet: bool = False) -> None:
    await asyncio.gather(*futures, return_exceptions=quiet)


async def _settle(result: Coroutine[Any, Any, int]) -> None:
    """Wait for a transfer to end, however it ends."""
    try:
        await result
    except Exception as exc:
        logger.debug("abandoned transfer ended: %s", exc)
