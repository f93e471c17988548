"""The prefill worker: prompts in, first tokens and KV out.

One compute thread runs a loop: ask the ``PrefillScheduler`` for a step plan, run the
model's forward pass over its chunks with the KV connector's layer hooks, tell the
scheduler the pass ran, and finish the prompts that are complete. Per prompt:

1. admission splits the prompt into store blocks and reuses what is cached: first this
   worker's own prefix cache (pages shared, no copy), then the store (the connector
   starts a layer-wise load straight into fresh pages). At least the last prompt token
   is always computed (its logits give the first output token).
2. the rest is computed in chunks, several prompts per forward pass; the connector waits
   for layer i of a loaded prefix just before layer i runs, and after layer i sends the
   layer of every block the pass completed to the store and, when decode runs in another
   process, of every finished page to the decode worker's pages (``KVTarget``).
3. once its last chunk ran: the connector verifies its loaded blocks (a cached block that
   failed its checksum is never used: the prompt runs again, computing from that block
   on) and commits its saves and pushes; the first token is sampled, the full pages enter
   the prefix cache, and the pages change hands: in one process the caller takes them;
   otherwise they have already been written to the decode worker.

A store that cannot be reached costs nothing but the reuse.

Profiling prompts (the router's cost-model fit at start-up) run in a namespace of their
own (``profiling_namespace``: the model id with ``#profiling``), so the store counts them
apart and they never enter a user's namespace or this worker's prefix cache;
``end_profiling`` removes their blocks from the store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from engine.kv.cache import CacheFull, PagedKVCache
from engine.kv.prefix_cache import PrefixCache
from engine.kv.write_back import WriteBack
from engine.model.llama import LlamaForCausalLM, SeqSlice
from engine.sampling import SamplingParams, sample
from engine.workers.device import Device
from engine.workers.prefill_scheduler import PrefillScheduler, StepPlan
from engine.workers.requests import InvalidRequest, KVTarget, PrefillResult, check_prompt
from engine.workers.thread_clock import ThreadClock
from kvstore.connector.backend import StoreBackend
from kvstore.connector.layouts import PageMajorLayout
from kvstore.connector.worker import KVConnector, RequestKV
from kvstore.hashing import Namespace, prefix_keys
from kvstore.stats import PROFILING_SUFFIX
from kvstore.transfer.engine import TransferEngine
from kvstore.types import BlockKey

logger = logging.getLogger(__name__)


@dataclass
class PrefillStats:
    requests: int = 0
    prompt_tokens: int = 0
    computed_tokens: int = 0
    cached_local_tokens: int = 0
    cached_store_tokens: int = 0
    recomputed_requests: int = 0  # a cached block failed its checksum or its load failed
    forward_passes: int = 0
    kept_blocks: int = 0  # blocks of finished generations taken into the prefix cache
    # where the prefill thread's wall seconds go (the thread does one thing at a time):
    admit_s: float = 0.0  # opening prompts: pages, and loading their cached blocks
    forward_s: float = 0.0  # forward passes (the model with the connector's layer hooks)
    forward_cpu_s: float = 0.0  # of which the thread was on a core
    forward_wait_s: float = 0.0  # and of which it waited for a core (run queue)
    pass_end_s: float = 0.0  # after a pass: waiting for its layers' saves and pushes
    finish_s: float = 0.0  # finishing prompts: verify, commit to the store, first token

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class Job:
    tokens: list[int]
    params: SamplingParams
    target: KVTarget | None
    future: concurrent.futures.Future[PrefillResult]
    submitted_s: float = field(default_factory=time.perf_counter)
    store_limit: int | None = None  # after a bad load: at most this many store blocks
    cache_salt: str = ""  # its keys' root (kvstore.hashing.root_key)
    profiling: bool = False  # the router's start-up profiling, kept apart


@dataclass
class Prompt:
    """A prompt being prefilled."""

    job: Job
    kv: RequestKV
    local_blocks: int
    store_blocks: int
    admitted_s: float
    position: int = 0  # tokens its pages hold so far
    logits: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.job.tokens)

    @property
    def reused_blocks(self) -> int:
        return self.local_blocks + self.store_blocks


def profiling_namespace(namespace: Namespace) -> Namespace:
    """Where start-up profiling's blocks go: apart from every user's."""
    model_id = namespace.model_id + PROFILING_SUFFIX
    return Namespace(model_id, namespace.spec, namespace.salt)


class PrefillWorker:
    def __init__(
        self,
        model: LlamaForCausalLM,
        cache: PagedKVCache,
        *,
        loop: asyncio.AbstractEventLoop,
        store: StoreBackend | None = None,
        transfer: TransferEngine | None = None,
        chunk_tokens: int = 512,
        max_batch_tokens: int = 2048,
        prefix_caching: bool = True,
        device: Device | None = None,
    ) -> None:
        """``device``: shared with a decode worker of this process (colocated)."""
        self.model = model
        self.cache = cache
        self.store = store
        self.namespace = store.namespace if store else Namespace(model.config.model_id, cache.spec)
        self.profiling_store = (
            StoreBackend(store.client, profiling_namespace(store.namespace)) if store else None
        )
        self._profiled: list[BlockKey] = []  # blocks profiling saved to the store
        self.connector = KVConnector(
            PageMajorLayout(cache.pages, cache.spec), loop=loop, store=store, transfer=transfer
        )
        self.prefix = PrefixCache(cache, enabled=prefix_caching)
        self.scheduler: PrefillScheduler[Job, Prompt] = PrefillScheduler(
            chunk_tokens=chunk_tokens, max_batch_tokens=max_batch_tokens
        )
        self.stats = PrefillStats()
        self.device = device or Device()
        self._incoming: list[Job] = []
        self._kept: list[tuple[list[BlockKey], list[int]]] = []
        self._wake = threading.Condition()
        self._releases = 0  # counts the cache's page releases (an idle wait's event)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="strata-prefill", daemon=True)
        cache.on_release(self._pages_released)

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
        for job in [*self._incoming, *self.scheduler.waiting]:
            job.future.set_exception(RuntimeError("prefill worker stopped"))
        self._incoming.clear()
        self.scheduler.waiting.clear()
        for _, pages in self._kept:
            self.cache.release(pages)
        self._kept.clear()
        self.prefix.clear()

    def submit(
        self,
        tokens: Sequence[int],
        params: SamplingParams,
        target: KVTarget | None = None,
        cache_salt: str = "",
        *,
        profiling: bool = False,
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
        job = Job(
            list(tokens),
            params,
            target,
            concurrent.futures.Future(),
            cache_salt=cache_salt,
            profiling=profiling,
        )
        with self._wake:
            if self._stopping:
                raise RuntimeError("prefill worker stopped")
            self._incoming.append(job)
            self._wake.notify()
        return job.future

    async def prefill(
        self,
        tokens: Sequence[int],
        params: SamplingParams,
        target: KVTarget | None = None,
        cache_salt: str = "",
        *,
        profiling: bool = False,
    ) -> PrefillResult:
        future = self.submit(tokens, params, target, cache_salt, profiling=profiling)
        return await asyncio.wrap_future(future)

    async def end_profiling(self) -> int:
        """Remove the blocks profiling saved from the store; how many were removed (run
        on the worker's loop)."""
        keys, self._profiled = self._profiled, []
        store = self.profiling_store
        if store is None or not keys:
            return 0
        return await store.remove(keys)

    def keep(self, keys: Sequence[BlockKey], pages: Sequence[int]) -> None:
        """Take full pages of a finished generation into the prefix cache (thread-safe;
        the worker takes over one reference on each page)."""
        with self._wake:
            if self._stopping:
                self.cache.release(pages)
                return
            self._kept.append((list(keys), list(pages)))
            self._wake.notify()

    def write_back(self) -> WriteBack:
        """What a decode worker sharing this worker's cache does with finished
        generations: keep their blocks here, and save them through this connector."""
        return WriteBack(self.cache, self.namespace, connector=self.connector, keeper=self)

    @property
    def num_queued(self) -> int:
        """Prompts waiting or being prefilled."""
        return len(self._incoming) + len(self.scheduler.waiting) + len(self.scheduler.running)

    # -- the compute thread -----------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        blocked_at: int | None = None  # the release count when admission found no room
        while True:
            with self._wake:
                while not self._stopping and not self._ready(blocked_at):
                    self._wake.wait()
                if self._stopping:
                    return
                for job in self._incoming:
                    self.scheduler.add(job)
                self._incoming.clear()
                kept, self._kept = self._kept, []
                releases = self._releases
            for keys, pages in kept:
                self.prefix.insert(keys, pages)
                self.cache.release(pages)
                self.stats.kept_blocks += len(keys)
            plan = self.scheduler.schedule(self._admit)
            for job, exc in plan.failed:
                job.future.set_exception(exc)
            blocked_at = releases if plan.blocked else None
            if plan.chunks:
                self._run_step(plan)

    def _ready(self, blocked_at: int | None) -> bool:
        """Something to do: a pass to run, prompts to admit, pages to keep."""
        if self._incoming or self._kept or self.scheduler.running:
            return True
        return bool(self.scheduler.waiting) and blocked_at != self._releases

    def _pages_released(self) -> None:
        with self._wake:
            self._releases += 1
            self._wake.notify()

    def _run_step(self, plan: StepPlan[Job, Prompt]) -> None:
        try:
            hooks = self.connector.step([(p.kv, p.position, n) for p, n in plan.chunks])
            slices = [
                SeqSlice(
                    torch.tensor(p.job.tokens[p.position : p.position + n]), p.position, p.kv.pages
                )
                for p, n in plan.chunks
            ]
            clock = ThreadClock.now()
            with self.device.turn():
                logits = self.model(slices, self.cache, hooks=hooks)
            forward = ThreadClock.now() - clock
            forward_end = time.perf_counter()
            self.stats.forward_s += forward.wall_s
            self.stats.forward_cpu_s += forward.cpu_s
            self.stats.forward_wait_s += forward.wait_s
            hooks.done()
            self.stats.pass_end_s += time.perf_counter() - forward_end
        except Exception as exc:  # a bug or a device error: fail the running prompts only
            logger.exception("prefill failed")
            for prompt in list(self.scheduler.running):
                self.scheduler.remove(prompt)
                self._drop(prompt)
                if not prompt.job.future.done():
                    prompt.job.future.set_exception(exc)
            return
        self.stats.forward_passes += 1
        for (prompt, n), out in zip(plan.chunks, logits, strict=True):
            if prompt.position + n == prompt.num_tokens:
                prompt.logits = out
        for prompt in self.scheduler.advance(plan):  # its first token goes out now
            start = time.perf_counter()
            try:
                self._finish(prompt, start - prompt.admitted_s)
            except Exception as exc:
                logger.exception("finishing a prefill failed")
                self._drop(prompt)
                if not prompt.job.future.done():
                    prompt.job.future.set_exception(exc)
            self.stats.finish_s += time.perf_counter() - start

    def _admit(self, job: Job) -> Prompt | None:
        """Pages for the prompt and what of it is cached (None: no room now)."""
        start = time.perf_counter()
        try:
            return self._open(job)
        finally:
            self.stats.admit_s += time.perf_counter() - start

    def _open(self, job: Job) -> Prompt | None:
        block = self.cache.page_tokens
        store = self.store
        namespace = self.namespace
        if job.profiling:
            store = self.profiling_store
            namespace = profiling_namespace(namespace)
        keys = prefix_keys(namespace.id, job.tokens, block, cache_salt=job.cache_salt)
        reusable = (len(job.tokens) - 1) // block  # the last token is always computed
        local = [] if job.profiling else self.prefix.match(keys[:reusable])
        try:
            fresh = self.prefix.allocate(self._pages_needed(job) - len(local))
        except CacheFull:
            self.cache.release(local)
            return None
        pages = local + fresh
        try:
            kv = self.connector.open(keys, pages, len(job.tokens), target=job.target, store=store)
        except BaseException:
            self.cache.release(pages)
            raise
        want = reusable - len(local)
        if job.store_limit is not None:
            want = min(want, max(0, job.store_limit - len(local)))
        hits = self.connector.load(kv, len(local), want)
        prompt = Prompt(job, kv, len(local), hits, time.perf_counter())
        prompt.position = prompt.reused_blocks * block
        return prompt

    def _pages_needed(self, job: Job) -> int:
        """The prompt's pages; for pages that stay in this process (a decode worker here
        takes them), room for the whole sequence too, so that it never runs out of pages
        mid-stream."""
        if job.target is not None:
            return self.cache.pages_for(len(job.tokens))
        context = self.model.config.max_position_embeddings
        return self.cache.pages_to_finish(len(job.tokens), job.params.max_tokens, context)

    def _finish(self, prompt: Prompt, compute_s: float) -> None:
        job, kv = prompt.job, prompt.kv
        verified = self.connector.verify(kv)
        if verified < prompt.store_blocks:  # never serve what the store got wrong
            self.stats.recomputed_requests += 1
            self._drop(prompt)
            job.store_limit = prompt.local_blocks + verified
            self.scheduler.add_first(job)
            return
        try:
            self.connector.commit(kv)
        except Exception as exc:
            self._drop(prompt)
            job.future.set_exception(exc)
            return
        block = self.cache.page_tokens
        full = len(job.tokens) // block
        if job.profiling:
            self._profiled += kv.keys[:full]
        else:
            self.prefix.insert(kv.keys[:full], kv.pages[:full])
        assert prompt.logits is not None
        first_token = sample(prompt.logits, job.params, 0)
        reused = prompt.reused_blocks * block
        self.stats.requests += 1
        self.stats.prompt_tokens += len(job.tokens)
        self.stats.computed_tokens += len(job.tokens) - reused
        self.stats.cached_local_tokens += prompt.local_blocks * block
        self.stats.cached_store_tokens += prompt.store_blocks * block
        pages, kv.pages = kv.pages, []
        if job.target is not None:
            self.cache.release(pages)
            pages = []
        job.future.set_result(
            PrefillResult(
                first_token=first_token,
                pages=pages,
                cached_local_tokens=prompt.local_blocks * block,
                cached_store_tokens=prompt.store_blocks * block,
                cached_remote_tokens=kv.remote_hits * block,
                computed_tokens=len(job.tokens) - reused,
                queue_s=prompt.admitted_s - job.submitted_s,
                compute_s=compute_s,
            )
        )

    def _drop(self, prompt: Prompt) -> None:
        """Undo a prompt's transfers (waiting for those still writing its pages), then
        free its pages."""
        self.connector.abort(prompt.kv)
        if prompt.kv.pages:
            self.cache.release(prompt.kv.pages)
            prompt.kv.pages = []
