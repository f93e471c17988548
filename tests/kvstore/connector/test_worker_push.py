"""Pushes: the connector sends each finished page's layers to another worker's pages,
over a real data plane on loopback (a decode worker's segment of page-major pages)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from kvstore.connector.worker import KVConnector, PushFailed
from kvstore.transfer.engine import TransferEngine
from kvstore.transfer.segments import Segment, SegmentRegistry
from kvstore.transfer.server import SegmentServer
from tests.kvstore.connector.caches import NUM_PAGES, SPEC, block_of, page_major
from tests.kvstore.connector.loop_thread import LoopThread
from tests.kvstore.connector.passes import KEYS, PAGES, TOKENS, run_pass

TRANSFER_ID = 7


@dataclass(frozen=True)
class Target:
    addresses: tuple[str, ...]
    pages: tuple[int, ...]
    transfer_id: int = TRANSFER_ID
    segment: str = "kv"


@dataclass
class Decode:
    """The receiving worker: its pages, exposed as segment ``kv`` of its data plane."""

    pages: torch.Tensor
    server: SegmentServer
    addresses: tuple[str, ...]


@pytest.fixture
def decode(loop_thread: LoopThread) -> Iterator[Decode]:
    pages = torch.zeros(NUM_PAGES, *SPEC.shape, dtype=SPEC.dtype.torch_dtype())
    registry = SegmentRegistry()
    registry.register(Segment("kv", pages.view(torch.uint8).reshape(-1).numpy().data.cast("B")))
    server = SegmentServer("decode", "decode-host", registry)
    addresses = loop_thread.run(server.start(["127.0.0.1"], 0))
    try:
        yield Decode(pages, server, tuple(addresses))
    finally:
        loop_thread.run(server.close())


@pytest.fixture
def transfer(loop_thread: LoopThread) -> Iterator[TransferEngine]:
    engine = TransferEngine(host_id="prefill-host", timeout_s=5.0)  # another host: TCP
    try:
        yield engine
    finally:
        loop_thread.run(engine.close())


def test_each_finished_page_goes_to_the_target_layer_by_layer(
    decode: Decode, transfer: TransferEngine, loop_thread: LoopThread
) -> None:
    layout = page_major()
    connector = KVConnector(layout, loop=loop_thread.loop, transfer=transfer)
    target = Target(decode.addresses, (4, 0, 5, 1))
    kv = connector.open(KEYS, PAGES, TOKENS, target=target)

    hooks = connector.step([(kv, 0, 6)])  # finishes page 0 only (tokens 0-3)
    hooks.before_layer(0)
    hooks.after_layer(0)
    loop_thread.run(decode.server.wait_layer(TRANSFER_ID, 0, timeout_s=5.0))
    assert torch.equal(decode.pages[4, 0], block_of(layout, PAGES[0])[0])
    assert (decode.pages[4, 1] == 0).all()  # layer 1 is not computed yet
    hooks.before_layer(1)
    hooks.after_layer(1)
    hooks.done()

    run_pass(connector, [(kv, 6, 8)])  # the last pass finishes every other page
    connector.commit(kv)  # waits for every push
    for page, to in zip(PAGES, target.pages, strict=True):
        assert torch.equal(decode.pages[to], block_of(layout, page)), f"page {page}"
    assert (decode.pages[[2, 3]] == 0).all()


def test_commit_fails_when_the_target_did_not_get_the_kv(
    decode: Decode, transfer: TransferEngine, loop_thread: LoopThread
) -> None:
    connector = KVConnector(page_major(), loop=loop_thread.loop, transfer=transfer)
    kv = connector.open(KEYS, PAGES, TOKENS, target=Target(decode.addresses, (0, 1, 2, 99)))
    run_pass(connector, [(kv, 0, TOKENS)])
    with pytest.raises(PushFailed, match="did not reach the target"):
        connector.commit(kv)


def test_commit_waits_for_pushes_the_busy_loop_has_not_started_yet(
    decode: Decode, transfer: TransferEngine, loop_thread: LoopThread
) -> None:
    """The loop is busy with other work while the last layer is pushed: commit must
    still wait for (and report) that push."""
    connector = KVConnector(page_major(), loop=loop_thread.loop, transfer=transfer)
    kv = connector.open(KEYS, PAGES, TOKENS, target=Target(decode.addresses, (0, 1, 2, 99)))
    release = loop_thread.block()
    run_pass(connector, [(kv, 0, TOKENS)])
    threading.Timer(0.2, release.set).start()
    with pytest.raises(PushFailed, match="did not reach the target"):
        connector.commit(kv)
