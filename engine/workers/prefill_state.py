"""What the prefill worker keeps per prompt while it runs, and what it does around each
layer of a forward pass (``StepHooks``: wait for a prompt's cached KV before the layer,
send the layer's new KV to the store and to the decode worker after it)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch

from engine.kv.connector import StoreConnector
from engine.kv.host_pages import HostPages
from engine.sampling import SamplingParams
from engine.workers.requests import KVTarget, PrefillResult
from kvstore.client.layered import LayeredGet, LayeredPut
from kvstore.transfer.engine import Peer
from kvstore.types import BlockKey

if TYPE_CHECKING:
    from engine.workers.prefill import PrefillWorker

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

    def as_dict(self) -> dict[str, int]:
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


class Put(NamedTuple):
    first_block: int  # of the prompt
    put: LayeredPut

    @property
    def blocks(self) -> range:
        return range(self.first_block, self.first_block + len(self.put.keys))


@dataclass
class PromptState:
    """A prompt being prefilled."""

    job: Job
    keys: list[BlockKey]
    pages: list[int]
    host: HostPages
    local_blocks: int
    store_blocks: int
    remote_blocks: int  # of the store's, served by another node
    load: LayeredGet | None
    peer: Peer | None
    admitted_s: float
    position: int = 0  # tokens the pages hold so far
    pushed_pages: int = 0  # pages already written to the target
    loading: bool = False  # its first forward pass has not yet waited for the load
    load_failed: bool = False
    puts: list[Put] = field(default_factory=list)
    pushes: list[asyncio.Future[None]] = field(default_factory=list)
    logits: torch.Tensor | None = None

    @property
    def reused_tokens(self) -> int:
        return (self.local_blocks + self.store_blocks) * self.host.cache.page_tokens


class StepHooks:
    """Per layer of one forward pass: wait for loads before, send KV after."""

    def __init__(
        self, worker: PrefillWorker, step: Sequence[tuple[PromptState, int]], puts: dict[int, Put]
    ) -> None:
        self.worker = worker
        self.step = step
        self.puts = puts
        page_tokens = worker.cache.page_tokens
        self.pushed_upto: dict[int, int] = {}
        self._push: dict[int, range] = {}
        for state, n in step:
            end = state.position + n
            done = len(state.pages) if end == len(state.job.tokens) else end // page_tokens
            self.pushed_upto[id(state)] = done
            self._push[id(state)] = range(state.pushed_pages, done)

    def before_layer(self, layer: int) -> None:
        for state, _ in self.step:
            if state.load is None or not state.loading or state.load_failed:
                continue
            try:
                self.worker._call(state.load.layer(layer))
            except Exception as exc:  # the load broke: recompute this prompt afterwards
                logger.warning("loading cached KV failed (%s); recomputing", exc)
                state.load_failed = True
                if self.worker.connector is not None:
                    self.worker.connector.failed(exc)
                continue
            start = state.local_blocks
            state.host.to_device(layer, range(start, start + state.store_blocks))

    def after_layer(self, layer: int) -> None:
        loop = self.worker._loop
        for state, _ in self.step:
            put = self.puts.get(id(state))
            if put is not None:
                state.host.to_host(layer, put.blocks)
                loop.call_soon_threadsafe(put.put.write_layer, layer)
            if state.job.target is not None and self._push[id(state)]:
                self.worker._push_layer(state, layer, self._push[id(state)])


def remote_blocks(load: LayeredGet | None, connector: StoreConnector | None) -> int:
    if load is None or connector is None or not connector.node_id:
        return 0
    return sum(node != connector.node_id for node in load.node_ids[: load.num_hits])
