"""The vLLM connector's transfers alone, without vLLM: how fast its load path puts held
blocks into vLLM's KV cache, against memcpy of the same bytes; and what a chunked
prefill stages when each pass opens its request anew (as ``StrataConnector`` does).

Both drive the connector core (``KVConnector``) the way the vLLM connector's worker does,
over a cache laid out as vLLM's CPU KV cache (``HeadMajorLayout``, ``KVSplit.TOKENS``:
one ``[page, kv_head, token, 2 * head_dim]`` tensor per layer, pages in random order),
against the store node and with the client options the vLLM runs use:

- **load**: ``num_blocks`` blocks the node holds; per round, open them over the pages,
  start the load, run one pass's hooks (each layer waits for its bytes, then is
  scattered from the staging buffer into the head-major pages), ``verify`` (every
  block's checksum): ``load_gbps`` is their bytes over that time, ``memcpy_gbps`` one
  numpy copy of as many bytes (the host's limit). The load's parts are timed alone too:
  its start (``load_start_ms``: the node's lease of the blocks, one round trip), the
  scatter into the pages (``scatter_gbps``) and the checksums (``checksum_gbps``).
- **chunked**: a ``num_tokens`` prompt prefilled ``chunk_tokens`` at a time, each pass
  opening the request's pages so far, saving the blocks it completes, committing in the
  background: the bytes staged per prompt (``staged_mib``, against
  ``every_page_mib``: what staging every page opened would take, as the connector did
  before staging only what a pass touches) and the compute thread's time in the
  connector per prompt (``connector_ms``, commits not awaited); then the wait for the
  prompt's commits after its last pass (``commit_wait_ms``: what a ``kv_producer``'s
  last prompt step adds, on the same node and route).

Medians over ``rounds``. A library for ``bench.vllm`` (which starts the node); it needs
no vLLM.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bench.transfer import memcpy_gbps
from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.connector.backend import StoreBackend
from kvstore.connector.layouts import HeadMajorLayout, KVSplit
from kvstore.connector.loop import LoopThread
from kvstore.connector.staging import HostBlocks
from kvstore.connector.worker import KVConnector
from kvstore.hashing import Namespace, checksum, prefix_keys
from kvstore.types import BlockKey

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Rig:
    """The connector over a vLLM-shaped cache, and the namespace its keys are in."""

    connector: KVConnector
    layout: HeadMajorLayout
    namespace: Namespace

    @property
    def num_pages(self) -> int:
        return int(self.layout.layers[0].shape[0])

    def keys(self, num_tokens: int, rng: random.Random) -> list[BlockKey]:
        """The keys of a prompt of random tokens (no other prompt's prefix)."""
        tokens = [rng.randrange(3, 1 << 15) for _ in range(num_tokens)]
        return prefix_keys(self.namespace.id, tokens, self.namespace.spec.block_tokens)


@dataclass(frozen=True, slots=True)
class CoreConfig:
    num_blocks: int  # held blocks each load moves
    num_tokens: int  # the chunked prompt
    chunk_tokens: int  # tokens per pass
    rounds: int
    seed: int


def core_figures(address: str, namespace: Namespace, config: CoreConfig) -> dict[str, float]:
    """Both measurements against the node at ``address`` (``namespace``: the vLLM
    runs' block shape, under a model id of its own)."""
    loop = LoopThread("bench-vllm-core")
    try:
        store = loop.run(_backend(address, namespace))
        loop.run(store.connect(block_tokens_key="block_size"))
        spec = namespace.spec
        num_pages = max(config.num_blocks, -(-config.num_tokens // spec.block_tokens))
        layout = vllm_cache(namespace, num_pages, config.seed)
        rig = Rig(KVConnector(layout, loop=loop.loop, store=store), layout, namespace)
        rng = random.Random(config.seed)
        figures = load_figures(rig, config, rng)
        figures.update(chunked_figures(rig, config, rng))
        loop.run(store.close())
    finally:
        loop.close()
    return figures


def vllm_cache(namespace: Namespace, num_pages: int, seed: int) -> HeadMajorLayout:
    """A CPU KV cache as vLLM's CPU backend allocates it, filled with random KV."""
    spec = namespace.spec
    generator = torch.Generator().manual_seed(seed)
    shape = (num_pages, spec.num_kv_heads, spec.block_tokens, 2 * spec.head_dim)
    dtype = spec.dtype.torch_dtype()
    layers = [torch.randn(shape, generator=generator).to(dtype) for _ in range(spec.num_layers)]
    return HeadMajorLayout(layers, spec, KVSplit.TOKENS)


def load_figures(rig: Rig, config: CoreConfig, rng: random.Random) -> dict[str, float]:
    connector, spec = rig.connector, rig.namespace.spec
    keys = rig.keys(config.num_blocks * spec.block_tokens, rng)
    stored = connector.save_blocks(keys, rng.sample(range(rig.num_pages), len(keys)), None)
    stored.result(timeout=60)
    num_bytes = config.num_blocks * spec.block_bytes
    _load_once(connector, keys, rng.sample(range(rig.num_pages), len(keys)))  # warm-up
    loads, starts, scatters, checksums = [], [], [], []
    for _ in range(config.rounds):
        pages = rng.sample(range(rig.num_pages), len(keys))
        load_s, start_s = _load_once(connector, keys, pages)
        loads.append(load_s)
        starts.append(start_s)
        scatters.append(_scatter_once(connector, pages))
        checksums.append(_checksums_once(connector, pages))
    load_gbps = num_bytes / statistics.median(loads) / 1e9
    memcpy = memcpy_gbps(num_bytes, config.rounds * 3)
    return {
        "load_gbps": load_gbps,
        "memcpy_gbps": memcpy,
        "load_over_memcpy": load_gbps / memcpy,
        "scatter_gbps": num_bytes / statistics.median(scatters) / 1e9,
        "checksum_gbps": num_bytes / statistics.median(checksums) / 1e9,
        "load_ms": statistics.median(loads) * 1e3,
        "load_start_ms": statistics.median(starts) * 1e3,
    }


def _load_once(
    connector: KVConnector, keys: Sequence[BlockKey], pages: Sequence[int]
) -> tuple[float, float]:
    """One load of every held block into ``pages``, as a vLLM step with a store hit runs
    it: start (the node leases the blocks), each layer awaited then scattered, every
    checksum verified; (seconds in all, seconds to start)."""
    spec = connector.layout.spec
    num_blocks = len(keys)
    started = time.perf_counter()
    kv = connector.open(keys, pages, num_blocks * spec.block_tokens + 1, save=False)
    hits = connector.load(kv, 0, num_blocks)
    start_s = time.perf_counter() - started
    hooks = connector.step([(kv, num_blocks * spec.block_tokens, 1)])
    for layer in range(spec.num_layers):
        hooks.before_layer(layer)
    hooks.done()
    verified = connector.verify(kv)
    elapsed = time.perf_counter() - started
    connector.commit(kv)
    if not hits == verified == num_blocks:
        raise RuntimeError(f"loaded {hits} blocks, verified {verified}, of {num_blocks}")
    return elapsed, start_s


def _scatter_once(connector: KVConnector, pages: Sequence[int]) -> float:
    """Staged blocks into the head-major pages, every layer (the load's copy alone)."""
    host = HostBlocks(connector.layout, pages)
    indices = range(len(pages))
    host.views(indices)
    started = time.perf_counter()
    for layer in range(connector.layout.spec.num_layers):
        host.to_device(layer, indices)
    return time.perf_counter() - started


def _checksums_once(connector: KVConnector, pages: Sequence[int]) -> float:
    host = HostBlocks(connector.layout, pages)
    blocks = host.views(range(len(pages)))
    started = time.perf_counter()
    for block in blocks:
        checksum(block)
    return time.perf_counter() - started


def chunked_figures(rig: Rig, config: CoreConfig, rng: random.Random) -> dict[str, float]:
    block = rig.namespace.spec.block_tokens
    staged, every_page, seconds, waits = [], [], [], []
    for _ in range(config.rounds):
        keys = rig.keys(config.num_tokens, rng)
        pages = rng.sample(range(rig.num_pages), -(-config.num_tokens // block))
        one = _prefill_once(rig.connector, keys, pages, config)
        staged.append(one[0])
        every_page.append(one[1])
        seconds.append(one[2])
        waits.append(one[3])
    return {
        "chunked_staged_mib": statistics.median(staged) / MIB,
        "chunked_every_page_mib": statistics.median(every_page) / MIB,
        "chunked_connector_ms": statistics.median(seconds) * 1e3,
        "chunked_commit_wait_ms": statistics.median(waits) * 1e3,
    }


def _prefill_once(
    connector: KVConnector, keys: Sequence[BlockKey], pages: Sequence[int], config: CoreConfig
) -> tuple[int, int, float, float]:
    """One chunked prefill's passes, each opening the request anew; (bytes staged,
    bytes every page opened would take, compute-thread seconds in the connector,
    seconds then waited for the commits)."""
    spec = connector.layout.spec
    staged = every_page = 0
    seconds = 0.0
    last = None
    for start in range(0, config.num_tokens, config.chunk_tokens):
        n = min(config.chunk_tokens, config.num_tokens - start)
        needed = -(-(start + n) // spec.block_tokens)
        began = time.perf_counter()
        kv = connector.open(keys[:needed], pages[:needed], config.num_tokens)
        hooks = connector.step([(kv, start, n)])
        for layer in range(spec.num_layers):
            hooks.before_layer(layer)
            hooks.after_layer(layer)
        hooks.done()
        last = connector.commit_later(kv, after=last)
        seconds += time.perf_counter() - began
        staged += kv.host.staged_bytes
        every_page += needed * spec.block_bytes
    began = time.perf_counter()
    if last is not None:
        last.result(timeout=60)
    return staged, every_page, seconds, time.perf_counter() - began


async def _backend(address: str, namespace: Namespace) -> StoreBackend:
    """The vLLM connector's worker backend (``kvstore.integrations.vllm``'s options)."""
    options = CallOptions(timeout_s=5.0, retries=1)
    return StoreBackend(StoreClient(address, options), namespace)
