"""The connector's worker side against an in-memory store: loads before each layer,
saves after it, commit or abort at the end; the test's thread is the compute thread.

The request throughout is ``passes``'s: 3 full blocks and 2 tokens over 4 pages.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest
import torch

from kvstore.client.layered import layer_slice
from kvstore.connector.layouts import KVLayout
from kvstore.connector.worker import KVConnector
from kvstore.errors import TransferFailed
from tests.kvstore.connector.caches import (
    NUM_PAGES,
    SPEC,
    block_bytes_of,
    block_of,
    layer_major,
    numbered,
    page_major,
)
from tests.kvstore.connector.fake_store import FakeStore, Put
from tests.kvstore.connector.loop_thread import LoopThread
from tests.kvstore.connector.passes import KEYS, PAGES, TOKENS, key, run_pass

LAYOUTS = {"page-major": page_major, "layer-major": layer_major}


def cached(seed: int) -> bytes:
    """A block the store holds (unlike anything in the caches)."""
    return (-numbered(*SPEC.shape, start=1000.0 * seed)).numpy().tobytes()


def as_block(data: bytes) -> torch.Tensor:
    return SPEC.view(bytearray(data))


def layer_of(data: bytes, layer: int) -> bytes:
    return bytes(layer_slice(memoryview(data), layer, SPEC.num_layers))


@pytest.fixture(params=list(LAYOUTS))
def layout(request: pytest.FixtureRequest) -> KVLayout:
    return LAYOUTS[request.param]()


@pytest.fixture
def store() -> FakeStore:
    return FakeStore(SPEC.num_layers)


@pytest.fixture
def connector(layout: KVLayout, store: FakeStore, loop_thread: LoopThread) -> KVConnector:
    return KVConnector(layout, loop=loop_thread.loop, store=store)  # type: ignore[arg-type]


# -- loads ---------------------------------------------------------------------------


def test_a_load_lands_in_the_pages_and_each_layer_waits_for_that_layer_only(
    connector: KVConnector, layout: KVLayout, store: FakeStore, loop_thread: LoopThread
) -> None:
    store.blocks.update({KEYS[0]: cached(1), KEYS[1]: cached(2)})
    before = [block_of(layout, p) for p in range(NUM_PAGES)]
    kv = connector.open(KEYS, PAGES, TOKENS)
    assert connector.load(kv, 0, 3) == 2  # the store holds the first 2 of 3
    get = store.gets[0]
    hooks = connector.step([(kv, 8, 6)])

    loop_thread.call(get.land, 0)
    hooks.before_layer(0)  # returns although layer 1 has not landed
    for page, data in zip(PAGES[:2], [cached(1), cached(2)], strict=True):
        assert torch.equal(block_of(layout, page)[0], as_block(data)[0])
        assert torch.equal(block_of(layout, page)[1], before[page][1])

    layer_1 = threading.Thread(target=hooks.before_layer, args=(1,))
    layer_1.start()
    layer_1.join(0.2)
    assert layer_1.is_alive()  # layer 1 cannot run before its KV is in the pages
    loop_thread.call(get.land, 1)
    layer_1.join(10.0)
    assert not layer_1.is_alive()
    hooks.done()

    assert get.awaited == [0, 1]
    for page in range(NUM_PAGES):
        want = {PAGES[0]: as_block(cached(1)), PAGES[1]: as_block(cached(2))}.get(
            page, before[page]
        )
        assert torch.equal(block_of(layout, page), want), f"page {page}"
    assert connector.verify(kv) == 2
    assert store.stats.load_s == get.load_s  # the load's own time, counted once verified

    connector.step([(kv, 12, 2)]).before_layer(0)  # a later pass waits for nothing
    assert get.awaited == [0, 1]
    connector.abort(kv)  # (the pass's save of block 2 ends)


def test_a_load_starts_past_the_blocks_the_engine_has_and_counts_remote_hits(
    connector: KVConnector, layout: KVLayout, store: FakeStore, loop_thread: LoopThread
) -> None:
    store.blocks.update({KEYS[0]: cached(1), KEYS[1]: cached(2), KEYS[2]: cached(3)})
    store.holders[KEYS[2]] = "node-b"  # another store node serves it
    before = block_of(layout, PAGES[0])
    kv = connector.open(KEYS, PAGES, TOKENS)
    assert connector.load(kv, 1, 2) == 2  # block 0 is in the engine's own cache
    assert (kv.load_first, kv.load_hits, kv.remote_hits) == (1, 2, 1)
    for layer in range(SPEC.num_layers):
        loop_thread.call(store.gets[0].land, layer)
    run_pass(connector, [(kv, 12, 2)])
    assert torch.equal(block_of(layout, PAGES[0]), before)
    assert torch.equal(block_of(layout, PAGES[1]), as_block(cached(2)))
    assert torch.equal(block_of(layout, PAGES[2]), as_block(cached(3)))

    other = connector.open(KEYS, [1, 4, 0, 3], TOKENS)
    assert connector.load(other, 0, 1) == 1  # no more than asked for
    assert connector.load(other, 0, 0) == 0 and len(store.gets) == 2


def test_a_load_that_breaks_midway_leaves_the_request_to_be_recomputed(
    connector: KVConnector, layout: KVLayout, store: FakeStore, loop_thread: LoopThread
) -> None:
    store.blocks.update({KEYS[0]: cached(1), KEYS[1]: cached(2)})
    kv = connector.open(KEYS, PAGES, TOKENS)
    assert connector.load(kv, 0, 2) == 2
    get = store.gets[0]
    error = TransferFailed("the store node went away")
    hooks = connector.step([(kv, 8, 6)])
    loop_thread.call(get.land, 0)
    hooks.before_layer(0)
    loop_thread.call(get.fail, error)
    hooks.before_layer(1)  # does not raise: the pass runs, its result is not used
    hooks.after_layer(1)
    hooks.done()
    assert store.failures == [error]  # the store is left alone for a while
    assert connector.verify(kv) == 0  # nothing loaded may be used
    assert store.stats.corrupted_blocks == 2

    connector.step([(kv, 12, 2)]).before_layer(1)  # not waited for again
    assert get.awaited == [0, 1]


def test_verify_counts_the_leading_blocks_that_matched_their_checksums(
    connector: KVConnector, store: FakeStore, loop_thread: LoopThread
) -> None:
    store.blocks.update({KEYS[0]: cached(1), KEYS[1]: cached(2), KEYS[2]: cached(3)})
    store.bad.add(KEYS[1])
    kv = connector.open(KEYS, PAGES, TOKENS)
    assert connector.load(kv, 0, 3) == 3
    for layer in range(SPEC.num_layers):
        loop_thread.call(store.gets[0].land, layer)
    run_pass(connector, [(kv, 12, 2)])
    assert connector.verify(kv) == 1  # recompute from block 1 on
    assert store.stats.corrupted_blocks == 2 and store.failures == []


# -- saves ---------------------------------------------------------------------------


def test_each_pass_saves_the_blocks_it_completes_with_their_parent(
    connector: KVConnector, store: FakeStore, loop_thread: LoopThread
) -> None:
    kv = connector.open(KEYS, PAGES, TOKENS)
    short = connector.open([key("s0")], [1, 4], 5)
    run_pass(connector, [(kv, 0, 6), (short, 4, 1)])  # short's only block was done before
    loop_thread.flush()
    assert [(s.keys, s.parent) for s in store.saves] == [([KEYS[0]], None)]
    run_pass(connector, [(kv, 6, 6)])  # tokens 6-11 complete blocks 1 and 2
    loop_thread.flush()
    assert [(s.keys, s.parent) for s in store.saves][1:] == [(KEYS[1:], KEYS[0])]
    run_pass(connector, [(kv, 12, 2)])  # the last, partial block is never saved
    loop_thread.flush()
    assert len(store.saves) == 2
    connector.abort(kv)


def test_a_request_opened_to_load_only_loads_and_saves_nothing_it_computes(
    connector: KVConnector, layout: KVLayout, store: FakeStore, loop_thread: LoopThread
) -> None:
    store.blocks[KEYS[0]] = cached(1)
    kv = connector.open(KEYS, PAGES, TOKENS, save=False)  # a consumer's request
    assert connector.load(kv, 0, 1) == 1
    for layer in range(SPEC.num_layers):
        loop_thread.call(store.gets[0].land, layer)
    run_pass(connector, [(kv, 4, 10)])  # completes blocks 1 and 2
    assert torch.equal(block_of(layout, PAGES[0]), as_block(cached(1)))
    assert connector.verify(kv) == 1
    connector.commit(kv)
    loop_thread.flush()
    assert store.saves == [] and set(store.blocks) == {KEYS[0]}


def test_a_save_sends_each_layer_once_it_is_computed(
    connector: KVConnector, layout: KVLayout, store: FakeStore, loop_thread: LoopThread
) -> None:
    kv = connector.open(KEYS, PAGES, TOKENS)
    hooks = connector.step([(kv, 0, 8)])
    loop_thread.flush()
    (put,) = store.saves
    pages = PAGES[:2]
    hooks.before_layer(0)
    hooks.after_layer(0)
    loop_thread.flush()
    assert put.sent == [[layer_of(block_bytes_of(layout, p), 0) for p in pages]]

    layout.write_layer(1, pages, -numbered(2, *SPEC.shape[1:]))  # the model computes layer 1
    hooks.before_layer(1)
    hooks.after_layer(1)
    loop_thread.flush()
    assert put.sent[1] == [layer_of(block_bytes_of(layout, p), 1) for p in pages]
    assert store.committed == [] and not put.aborted
    connector.abort(kv)
    loop_thread.flush()
    assert store.saves[0].aborted and store.committed == []  # (put, re-read)


def test_nothing_saved_is_visible_before_commit(
    connector: KVConnector, layout: KVLayout, store: FakeStore
) -> None:
    kv = connector.open(KEYS, PAGES, TOKENS)
    run_pass(connector, [(kv, 0, 6)])
    run_pass(connector, [(kv, 6, 8)])
    assert store.blocks == {} and connector.num_matched_blocks(KEYS, 0) == 0
    connector.commit(kv)
    assert store.committed == store.saves
    assert store.blocks == {k: block_bytes_of(layout, p) for k, p in zip(KEYS, PAGES, strict=False)}
    assert store.stats.saved_blocks == 3
    connector.commit(kv)  # committed once only
    assert len(store.committed) == 2


def test_abort_gives_every_save_back_and_nothing_becomes_visible(
    connector: KVConnector, store: FakeStore, loop_thread: LoopThread
) -> None:
    kv = connector.open(KEYS, PAGES, TOKENS)
    run_pass(connector, [(kv, 0, 6)])
    run_pass(connector, [(kv, 6, 8)])
    connector.abort(kv)
    loop_thread.flush()
    assert [s.aborted for s in store.saves] == [True, True]
    connector.commit(kv)  # a late commit has nothing left to commit
    assert store.committed == [] and store.blocks == {}


def test_abort_waits_until_no_load_still_writes_the_pages(
    connector: KVConnector, store: FakeStore, loop_thread: LoopThread
) -> None:
    store.blocks.update({KEYS[0]: cached(1)})
    kv = connector.open(KEYS, PAGES, TOKENS)
    assert connector.load(kv, 0, 1) == 1
    loop_thread.call(store.gets[0].land, 0)
    aborting = threading.Thread(target=connector.abort, args=(kv,))
    aborting.start()
    aborting.join(0.2)
    assert aborting.is_alive()  # layer 1 is still on its way into the pages
    loop_thread.call(store.gets[0].fail, TransferFailed("gone"))
    aborting.join(10.0)
    assert not aborting.is_alive()


def test_a_pass_and_its_commit_never_wait_for_the_store(
    connector: KVConnector, layout: KVLayout, store: FakeStore, loop_thread: LoopThread
) -> None:
    kv = connector.open(KEYS, PAGES, TOKENS)
    busy = loop_thread.block()  # the loop (and so every store call) is held up
    done: list[object] = []

    def compute() -> None:
        run_pass(connector, [(kv, 0, 8)])
        done.append(connector.commit_later(kv))

    thread = threading.Thread(target=compute)
    thread.start()
    thread.join(10.0)
    finished = not thread.is_alive()
    busy.set()
    assert finished  # the pass ran and returned while the store could not answer
    (committed,) = done
    assert isinstance(committed, concurrent.futures.Future)
    assert committed.result(10.0) is None
    assert store.committed == store.saves
    pages = dict(zip(KEYS[:2], PAGES[:2], strict=True))
    assert store.blocks == {k: block_bytes_of(layout, p) for k, p in pages.items()}


def test_later_commits_of_a_request_keep_their_order_parents_first(
    connector: KVConnector, store: FakeStore, loop_thread: LoopThread
) -> None:
    slow = asyncio.Event()
    store.reserving[KEYS[0]] = slow  # the first pass's reservation is slow
    first = connector.open(KEYS, PAGES, TOKENS)
    run_pass(connector, [(first, 0, 4)])
    first_done = connector.commit_later(first)
    second = connector.open(KEYS, PAGES, TOKENS)  # the next step's view of the request
    run_pass(connector, [(second, 4, 8)])
    second_done = connector.commit_later(second, after=first_done)
    loop_thread.flush()
    assert [s.keys for s in store.saves] == [KEYS[1:]]  # reserved, its layers sent...
    assert store.committed == [] and not second_done.done()  # ...but not before its parent
    loop_thread.call(slow.set)
    second_done.result(10.0)
    assert [s.keys for s in store.committed] == [KEYS[:1], KEYS[1:]]
    assert first_done.done()


def test_a_pass_while_the_store_is_down_saves_nothing_and_commits_at_once(
    connector: KVConnector, store: FakeStore
) -> None:
    store.available = False
    kv = connector.open(KEYS, PAGES, TOKENS)
    run_pass(connector, [(kv, 0, TOKENS)])
    assert kv.saves == [] and connector.commit_later(kv).result(10.0) is None
    assert store.saves == []


def test_save_blocks_saves_whole_blocks_and_says_how_many_were_new(
    connector: KVConnector, layout: KVLayout, store: FakeStore
) -> None:
    done = connector.save_blocks(KEYS[:2], PAGES[:2], None)
    assert done.result(10.0) == 2
    assert store.puts == [Put(KEYS[:2], None)]
    assert store.blocks == {
        k: block_bytes_of(layout, p) for k, p in zip(KEYS[:2], PAGES[:2], strict=True)
    }
    assert connector.save_blocks(KEYS[1:], PAGES[1:3], KEYS[0]).result(10.0) == 1
    assert store.puts[1] == Put(KEYS[1:], KEYS[0])
    assert store.blocks[KEYS[2]] == block_bytes_of(layout, PAGES[2])


# -- the scheduler's side and no store -----------------------------------------------


def test_num_matched_blocks_is_what_the_store_adds_to_what_the_engine_has(
    connector: KVConnector, store: FakeStore
) -> None:
    store.blocks.update({KEYS[0]: cached(1), KEYS[1]: cached(2)})
    assert connector.num_matched_blocks(KEYS, 0) == 2
    assert connector.num_matched_blocks(KEYS, 1) == 1
    assert connector.num_matched_blocks(KEYS, 2) == 0
    assert store.lookups == 3
    assert connector.num_matched_blocks(KEYS, 3) == 0  # the engine has all: no lookup
    assert store.lookups == 3


def test_without_a_store_every_transfer_is_a_no_op(
    layout: KVLayout, loop_thread: LoopThread
) -> None:
    connector = KVConnector(layout, loop=loop_thread.loop)
    before = [block_of(layout, p) for p in range(NUM_PAGES)]
    kv = connector.open(KEYS, PAGES, TOKENS)
    assert connector.num_matched_blocks(KEYS, 0) == 0
    assert connector.load(kv, 0, 3) == 0
    run_pass(connector, [(kv, 0, TOKENS)])
    assert connector.verify(kv) == 0
    connector.commit(kv)
    connector.abort(kv)
    assert connector.save_blocks(KEYS, PAGES[:3], None).result(0) == 0
    assert all(torch.equal(block_of(layout, p), before[p]) for p in range(NUM_PAGES))


def test_a_push_target_needs_a_transfer_engine(connector: KVConnector) -> None:
    class Target:
        addresses = ("127.0.0.1:1",)
        pages = (0, 1, 2, 3)
        transfer_id = 1
        segment = "kv"

    with pytest.raises(RuntimeError, match="no transfer engine"):
        connector.open(KEYS, PAGES, TOKENS, target=Target())
