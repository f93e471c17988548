"""The worker side of the connector: every transfer of a request's KV, layer by layer.

An engine's worker drives it from its compute thread, in the shape of vLLM's
``KVConnectorBase_V1``::

    kv = connector.open(keys, pages, num_tokens, target=None)   # a request's pages
                                                 # (save=False: its passes only load)
    hits = connector.load(kv, first, count)      # start loading cached blocks into pages
    hooks = connector.step([(kv, start, n), ...]) # one forward pass over those tokens
    model(..., hooks=hooks)                      # before layer i: wait for its loads;
                                                 # after it: save and push layer i
    verified = connector.verify(kv)              # loaded blocks that matched their checksums
    connector.commit(kv)  /  connector.abort(kv) # saves become visible, or nothing does
    done = connector.commit_later(kv)            # or: visible later, the step goes on

The connector owns the hop onto the event loop (the store client and the transfer engine
are asynchronous), host staging (``HostBlocks``), the store's leases (inside the layered
get) and every byte offset (the layout's ``layer_offset`` and ``BlockSpec``).

- Loads: the store's leading run of a request's keys lands in its pages; layer ``i`` is
  awaited just before the request's first pass runs layer ``i``. A load that breaks
  leaves the request to be recomputed; ``verify`` says how many leading blocks were whole
  and matched their checksums, before their KV outlives the pass that read them.
- Saves: after layer ``i``, layer ``i`` of every block a pass completed is copied to host
  memory (``HostBlocks``) and goes to the store (a layer-wise put into reserved slots).
  Each save is one background task on the loop (reserve, send each layer once the
  compute thread has handed it over, then commit or abort): the compute thread never
  waits for the store, not even for the reservation. Nothing is visible until
  ``commit``, and a commit happens only after every layer was sent; ``abort`` gives the
  slots back. ``commit`` waits for the commits; ``commit_later`` does not (it returns a
  future), and a request's saves commit in order, so a block never enters the store
  before its parent from an earlier pass. Once a staged layer is copied the save no
  longer reads the pages; zero-copy pages (a CPU cache of whole blocks) must keep their
  KV until the commit is done.
- Pushes: after layer ``i``, layer ``i`` of every page a pass finished goes to another
  worker's pages (``PushTarget``: a decode worker's data-plane segment), while layer
  ``i + 1`` computes. ``commit`` waits for them and fails if the peer did not get them.
- ``save_blocks``: whole finished blocks (e.g. a generation's answer), saved in the
  background; the caller learns when its pages may be reused.
- Scheduler side: ``num_matched_blocks`` says how many leading blocks the store holds
  beyond what the engine already has, within a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from kvstore.client.layered import LayeredGet
from kvstore.connector.backend import StoreBackend
from kvstore.connector.layouts import KVLayout
from kvstore.connector.staging import HostBlocks
from kvstore.transfer.engine import Peer, TransferEngine
from kvstore.transfer.transports import RangeWrite
from kvstore.types import BlockKey

logger = logging.getLogger(__name__)
T = TypeVar("T")


class PushTarget(Protocol):
    """Pages of another worker (its data plane's segment) that a request's KV goes to."""

    @property
    def addresses(self) -> tuple[str, ...]: ...
    @property
    def pages(self) -> tuple[int, ...]: ...
    @property
    def transfer_id(self) -> int: ...
    @property
    def segment(self) -> str: ...


class PushFailed(RuntimeError):
    """The target worker did not get a request's KV."""


class _End(enum.Enum):
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class _Commit:
    after: concurrent.futures.Future[None] | None  # an earlier save of the request


@dataclass
class _Save:
    """One pass's layer-wise put, driven by its task through ``commands`` (on the loop):
    layer numbers as they are computed, then a ``_Commit`` or ``_End.ABORT``."""

    first: int  # block index of the request
    num_blocks: int
    commands: asyncio.Queue[int | _Commit | _End]
    task: concurrent.futures.Future[None]

    @property
    def blocks(self) -> range:
        return range(self.first, self.first + self.num_blocks)


@dataclass
class RequestKV:
    """One request's transfers (opened by ``KVConnector.open``)."""

    keys: list[BlockKey]  # of its full blocks
    pages: list[int]  # in position order
    num_tokens: int
    host: HostBlocks
    store: StoreBackend | None = None  # its namespace's
    save: bool = True  # its passes save the blocks they complete
    target: PushTarget | None = None
    peer: Peer | None = None
    load: LayeredGet | None = None
    load_first: int = 0  # the first block being loaded
    load_hits: int = 0  # blocks coming from the store
    remote_hits: int = 0  # of those, served by another store node
    loading: bool = False  # no pass has waited for the load yet
    load_failed: bool = False
    saves: list[_Save] = field(default_factory=list)
    pushes: list[asyncio.Future[None]] = field(default_factory=list)  # on the loop only
    pushed_pages: int = 0  # pages already sent to the target


class KVConnector:
    def __init__(
        self,
        layout: KVLayout,
        *,
        loop: asyncio.AbstractEventLoop,
        store: StoreBackend | None = None,
        transfer: TransferEngine | None = None,
    ) -> None:
        self.layout = layout
        self.store = store
        self._loop = loop
        self._transfer = transfer

    @property
    def block_tokens(self) -> int:
        return self.layout.spec.block_tokens

    # -- the scheduler's side ------------------------------------------------------------

    def num_matched_blocks(self, keys: Sequence[BlockKey], have: int) -> int:
        """Leading blocks of ``keys`` the store holds beyond the ``have`` the engine
        already holds (0 without a store, or past the lookup deadline)."""
        if self.store is None or have >= len(keys):
            return 0
        return max(0, self._call(self.store.lookup(keys)) - have)

    # -- a request's transfers (compute thread) ------------------------------------------

    def open(
        self,
        keys: Sequence[BlockKey],
        pages: Sequence[int],
        num_tokens: int,
        *,
        target: PushTarget | None = None,
        store: StoreBackend | None = None,
        save: bool = True,
    ) -> RequestKV:
        """``store``: the backend of the request's namespace when it is not the
        connector's own (e.g. start-up profiling, kept apart from users' blocks).
        ``save``: whether its passes save the blocks they complete (else they only load
        and push)."""
        host = HostBlocks(self.layout, pages)
        kv = RequestKV(list(keys), list(pages), num_tokens, host, store or self.store, save)
        if target is not None:
            if self._transfer is None:
                raise RuntimeError("this connector has no transfer engine for push targets")
            kv.target = target
            kv.peer = self._call(self._transfer.connect(list(target.addresses)))
        return kv

    def load(self, kv: RequestKV, first: int, count: int) -> int:
        """Start loading the store's leading run of blocks ``[first, first + count)``
        into the request's pages; how many blocks are coming."""
        store = kv.store
        if store is None or count <= 0:
            return 0
        keys = kv.keys[first : first + count]
        get = self._call(store.load(keys, kv.host.views(range(first, first + count))))
        if get is None:
            return 0
        kv.load, kv.load_first, kv.load_hits = get, first, get.num_hits
        kv.loading = get.num_hits > 0
        if store.node_id:
            kv.remote_hits = sum(n != store.node_id for n in get.node_ids[: get.num_hits])
        return get.num_hits

    def step(self, items: Sequence[tuple[RequestKV, int, int]]) -> StepHooks:
        """The hooks of one forward pass that computes tokens ``[start, start + n)`` of
        each request: saves of the blocks it completes, pushes of the pages it finishes."""
        block = self.block_tokens
        saves: list[tuple[RequestKV, _Save | None, range]] = []
        for kv, start, n in items:
            save = None
            first, last = start // block, min((start + n) // block, len(kv.keys))
            if kv.save and kv.store is not None and kv.store.available and last > first:
                save = self._start_save(kv, first, last)
                kv.saves.append(save)
            push = range(0)
            if kv.target is not None:
                end = start + n
                done = len(kv.target.pages) if end >= kv.num_tokens else end // block
                push = range(kv.pushed_pages, done)
            saves.append((kv, save, push))
        return StepHooks(self, saves)

    def verify(self, kv: RequestKV) -> int:
        """How many loaded blocks arrived whole and matched their checksums (waits for
        the load to end); fewer than ``load_hits`` means recompute from there."""
        if kv.load is None:
            return kv.load_hits
        verified = 0
        if not kv.load_failed:
            try:
                verified = self._call(kv.load.verified())
                if kv.store is not None:
                    kv.store.stats.load_s += kv.load.load_s
            except Exception as exc:
                logger.warning("loading cached KV failed (%s); recomputing", exc)
                if kv.store is not None:
                    kv.store.failed(exc)
        if verified < kv.load_hits and kv.store is not None:
            kv.store.stats.corrupted_blocks += kv.load_hits - verified
        return verified

    def commit(self, kv: RequestKV) -> None:
        """Make the request's saves visible, and wait for them and for its pushes.

        Raises:
            PushFailed: the target worker did not get every layer.
        """
        try:
            self.commit_later(kv).result()
        except PushFailed:
            raise
        except Exception as exc:
            raise PushFailed(f"the KV did not reach the target: {exc}") from exc

    def commit_later(
        self, kv: RequestKV, *, after: concurrent.futures.Future[None] | None = None
    ) -> concurrent.futures.Future[None]:
        """Commit the request's saves in the background (each once its layers are sent)
        and return at once; the future is done when they are committed (a save the store
        failed is counted, not raised) and its pushes arrived (else it raises).

        Args:
            after: an earlier ``commit_later`` of the same request (another ``RequestKV``
                over its pages): these saves commit after it, parents before children.
        """
        saves, kv.saves = kv.saves, []
        for s in saves:
            self._loop.call_soon_threadsafe(s.commands.put_nowait, _Commit(after))
            after = s.task
        tasks = [s.task for s in saves]

        async def committed() -> None:
            for task in tasks:
                await _settle(asyncio.wrap_future(task))
            await _gather_pushes(kv)

        return asyncio.run_coroutine_threadsafe(committed(), self._loop)

    def abort(self, kv: RequestKV) -> None:
        """Undo the request's transfers: nothing it saved becomes visible, and no load or
        push still writes its pages when this returns."""
        saves, kv.saves = kv.saves, []
        for s in saves:
            self._loop.call_soon_threadsafe(s.commands.put_nowait, _End.ABORT)
        if kv.load is not None:
            self._call(_settle(kv.load.verified()))
        self._call(_gather_pushes(kv, quiet=True))

    def save_blocks(
        self,
        keys: Sequence[BlockKey],
        pages: Sequence[int],
        parent: BlockKey | None,
    ) -> concurrent.futures.Future[int]:
        """Save whole full blocks in the background (thread-safe). The pages must keep
        their KV until the future is done; it tells how many blocks were stored anew."""
        if self.store is None or not keys:
            done: concurrent.futures.Future[int] = concurrent.futures.Future()
            done.set_result(0)
            return done
        host = HostBlocks(self.layout, pages)
        everything = range(len(pages))
        for layer in range(self.layout.spec.num_layers):
            host.to_host(layer, everything)
        return asyncio.run_coroutine_threadsafe(
            self.store.put(keys, host.views(everything), parent), self._loop
        )

    # -- the event-loop hop --------------------------------------------------------------

    def _start_save(self, kv: RequestKV, first: int, last: int) -> _Save:
        """Blocks ``[first, last)`` of the request, saved by a task of their own."""
        store = kv.store
        assert store is not None
        parent = kv.keys[first - 1] if first else None
        keys, blocks = kv.keys[first:last], kv.host.views(range(first, last))
        commands: asyncio.Queue[int | _Commit | _End] = asyncio.Queue()
        task = asyncio.run_coroutine_threadsafe(
            _run_save(store, keys, blocks, parent, commands), self._loop
        )
        task.add_done_callback(_log_failure)
        return _Save(first, last - first, commands, task)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop and wait for it (from the compute thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _push_layer(self, kv: RequestKV, layer: int, indices: range) -> None:
        target, peer = kv.target, kv.peer
        assert target is not None and peer is not None
        kv.host.to_host(layer, indices)
        spec = self.layout.spec
        span = spec.layer_range(layer)
        writes = [
            RangeWrite(
                target.segment,
                self.layout.layer_offset(target.pages[i], layer),
                block[span.offset : span.offset + span.length],
            )
            for i, block in zip(indices, kv.host.views(indices), strict=True)
        ]

        def start() -> None:
            kv.pushes.append(
                asyncio.ensure_future(
                    peer.transport.write_ranges(target.transfer_id, layer, writes)
                )
            )

        self._loop.call_soon_threadsafe(start)


class StepHooks:
    """Per layer of one forward pass: wait for loads before, save and push after."""

    def __init__(
        self, connector: KVConnector, items: list[tuple[RequestKV, _Save | None, range]]
    ) -> None:
        self._connector = connector
        self._items = items

    def before_layer(self, layer: int) -> None:
        connector = self._connector
        for kv, _, _ in self._items:
            if kv.load is None or not kv.loading or kv.load_failed:
                continue
            try:
                connector._call(kv.load.layer(layer))
            except Exception as exc:  # the load broke: the request is recomputed
                logger.warning("loading cached KV failed (%s); recomputing", exc)
                kv.load_failed = True
                if kv.store is not None:
                    kv.store.failed(exc)
                continue
            first = kv.load_first
            kv.host.to_device(layer, range(first, first + kv.load_hits))

    def after_layer(self, layer: int) -> None:
        loop = self._connector._loop
        for kv, save, push in self._items:
            if save is not None:
                kv.host.to_host(layer, save.blocks)
                loop.call_soon_threadsafe(save.commands.put_nowait, layer)
            if push:
                self._connector._push_layer(kv, layer, push)

    def done(self) -> None:
        """The pass ran: its loads have landed and its pushes are under way."""
        for kv, _, push in self._items:
            kv.loading = False
            if push:
                kv.pushed_pages = push.stop


async def _gather_pushes(kv: RequestKV, *, quiet: bool = False) -> None:
    """Wait for the request's pushes. Taken on the loop: a push is started there by a
    callback the compute thread queued before this coroutine, so none is missed."""
    pushes, kv.pushes = kv.pushes, []
    await asyncio.gather(*pushes, return_exceptions=quiet)


async def _settle(result: Awaitable[T]) -> None:
    """Wait for a transfer to end, however it ends."""
    try:
        await result
    except Exception as exc:
        logger.debug("abandoned transfer ended: %s", exc)


async def _run_save(
    store: StoreBackend,
    keys: Sequence[BlockKey],
    blocks: Sequence[memoryview],
    parent: BlockKey | None,
    commands: asyncio.Queue[int | _Commit | _End],
) -> None:
    """One save, start to end: reserve, send each layer as the compute thread hands it
    over, then commit (after the request's earlier saves) or abort. A store that is down
    or refuses the reservation (``put`` None) costs nothing: the commands are drained."""
    put = await store.save(keys, blocks, parent)
    try:
        while True:
            command = await commands.get()
            if command is _End.ABORT:
                break
            if isinstance(command, _Commit):
                if command.after is not None:
                    await _settle(asyncio.wrap_future(command.after))
                if put is not None:
                    await store.commit(put)  # failures are counted there
                put = None
                break
            if put is not None:
                put.write_layer(command)
    finally:
        if put is not None:
            await put.abort()


def _log_failure(task: concurrent.futures.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("a KV save failed", exc_info=task.exception())
