"""Host bytes of a request's pages: zero-copy where the cache is host memory in block
layout, else a staging buffer that each layer crosses on its own."""

from __future__ import annotations

import torch

from kvstore.connector.staging import HostBlocks
from tests.kvstore.connector.caches import (
    NUM_PAGES,
    SPEC,
    block_of,
    layer_major,
    numbered,
    page_major,
)

PAGES = [4, 1, 3]  # a request's pages, in position order
ALL = range(len(PAGES))


def test_a_page_major_cpu_cache_is_never_staged() -> None:
    layout = page_major()
    host = HostBlocks(layout, PAGES)
    assert not host.staged
    SPEC.view(host.views([1])[0])[0].fill_(0.25)  # a store load landing in the request's block
    assert (layout.pages[1, 0] == 0.25).all()  # is in the page, with no copy
    host.to_device(0, [1])  # nothing to copy
    host.to_host(1, [0, 1, 2])
    assert (layout.pages[1, 0] == 0.25).all()


def test_a_layer_major_cache_is_staged_in_block_layout() -> None:
    host = HostBlocks(layer_major(), PAGES)
    blocks = host.views(ALL)
    assert host.staged
    assert [b.nbytes for b in blocks] == [SPEC.block_bytes] * len(PAGES)
    assert all(not b.readonly for b in blocks)


def test_to_host_copies_exactly_one_layer_of_the_chosen_pages() -> None:
    layout = layer_major()
    host = HostBlocks(layout, PAGES)
    for block in host.views(ALL):
        SPEC.view(block).fill_(-1.0)
    host.to_host(1, [0, 2])  # layer 1 of pages 4 and 3
    blocks = [SPEC.view(b) for b in host.views(ALL)]
    assert torch.equal(blocks[0][1], block_of(layout, 4)[1])
    assert torch.equal(blocks[2][1], block_of(layout, 3)[1])
    assert (blocks[0][0] == -1).all() and (blocks[2][0] == -1).all()  # layer 0 untouched
    assert (blocks[1] == -1).all()  # page 1 was not chosen


def test_to_device_copies_exactly_one_layer_of_the_chosen_pages() -> None:
    layout = layer_major()
    before = [block_of(layout, p) for p in range(NUM_PAGES)]
    host = HostBlocks(layout, PAGES)
    arrived = -numbered(len(PAGES), *SPEC.shape)
    for block, data in zip(host.views(ALL), arrived, strict=True):
        SPEC.view(block).copy_(data)  # a load landed in every staged block
    host.to_device(0, [1])  # layer 0 of page 1 only
    for page in range(NUM_PAGES):
        want = before[page].clone()
        if page == 1:
            want[0] = arrived[1][0]
        assert torch.equal(block_of(layout, page), want), f"page {page}"


def test_a_staged_round_trip_gives_back_the_same_kv() -> None:
    source = layer_major()
    out = HostBlocks(source, PAGES)
    for layer in range(SPEC.num_layers):
        out.to_host(layer, range(len(PAGES)))
    target = layer_major()
    for tensor in target.layers:
        tensor.zero_()
    into = HostBlocks(target, [0, 2, 5])
    for src, dst in zip(out.views(ALL), into.views(ALL), strict=True):
        dst[:] = src
    for layer in range(SPEC.num_layers):
        into.to_device(layer, range(len(PAGES)))
    for src_page, dst_page in zip(PAGES, [0, 2, 5], strict=True):
        assert torch.equal(block_of(target, dst_page), block_of(source, src_page))
    assert (block_of(target, 1) == 0).all()


def test_an_empty_choice_of_pages_copies_nothing() -> None:
    layout = layer_major()
    host = HostBlocks(layout, PAGES)
    host.to_host(0, [])
    host.to_device(0, [])
    assert torch.equal(block_of(layout, 4), block_of(layer_major(), 4))


def test_only_the_pages_a_transfer_touches_are_staged_one_buffer_per_first_touch() -> None:
    layout = layer_major()
    host = HostBlocks(layout, [0, 1, 2, 3, 4, 5])
    assert not host.staged and host.staged_bytes == 0  # opening a request costs nothing
    loaded = host.views(range(0, 2))  # a load of blocks 0-1
    assert host.staged_bytes == 2 * SPEC.block_bytes
    host.views(range(1, 4))  # a pass saving blocks 1-3: only 2 and 3 are new
    assert host.staged_bytes == 4 * SPEC.block_bytes
    assert host.views([1])[0] is loaded[1]  # page 1 keeps its bytes (not staged again)
    host.to_host(0, [1, 2, 3])  # spans both buffers
    for index in (1, 2, 3):
        assert torch.equal(SPEC.view(host.views([index])[0])[0], block_of(layout, index)[0])
    assert host.staged_bytes == 4 * SPEC.block_bytes  # pages 4 and 5 were never touched
