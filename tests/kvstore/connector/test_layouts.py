"""Where a block's bytes sit in an engine's cache: both layouts against the store's
block layout (``BlockSpec``), on CPU tensors."""

from __future__ import annotations

import pytest
import torch

from kvstore.connector.layouts import KVLayout, LayerMajorLayout, PageMajorLayout
from kvstore.errors import InvalidArgument
from tests.kvstore.connector.caches import (
    NUM_PAGES,
    SPEC,
    block_of,
    layer_major,
    numbered,
    page_major,
)

LAYOUTS = {"page-major": page_major, "layer-major": layer_major}


@pytest.fixture(params=list(LAYOUTS))
def layout(request: pytest.FixtureRequest) -> KVLayout:
    return LAYOUTS[request.param]()


def test_read_layer_gives_that_layer_of_each_pages_block_in_the_order_asked(
    layout: KVLayout,
) -> None:
    got = layout.read_layer(1, [4, 0, 2])
    assert got.shape == (3, 2, SPEC.block_tokens, SPEC.num_kv_heads, SPEC.head_dim)
    for row, page in zip(got, [4, 0, 2], strict=True):
        assert torch.equal(row, block_of(layout, page)[1])


def test_page_major_blocks_are_the_block_spec_view_of_each_page() -> None:
    layout = page_major()
    for page in range(NUM_PAGES):
        host = layout.host_block(page)
        assert host is not None and host.nbytes == SPEC.block_bytes
        block = SPEC.view(host)
        for layer in range(SPEC.num_layers):
            assert torch.equal(layout.read_layer(layer, [page])[0], block[layer])


def test_write_layer_then_read_layer_round_trips_and_touches_nothing_else(
    layout: KVLayout,
) -> None:
    before = [block_of(layout, p) for p in range(NUM_PAGES)]
    src = -numbered(2, *SPEC.shape[1:])
    layout.write_layer(0, [3, 1], src)
    assert torch.equal(layout.read_layer(0, [3, 1]), src)
    for page in range(NUM_PAGES):
        want = before[page].clone()
        if page in (3, 1):
            want[0] = src[[3, 1].index(page)]
        assert torch.equal(block_of(layout, page), want), f"page {page}"


def test_page_major_host_block_is_the_cache_itself() -> None:
    layout = page_major()
    host = layout.host_block(2)
    assert host is not None
    SPEC.view(host)[1, 0].fill_(0.5)  # layer 1's K, written through the view
    assert (layout.pages[2, 1, 0] == 0.5).all()
    layout.pages[2, 0, 1, 0, 0, 0] = 7.0  # and the other way round
    assert SPEC.view(host)[0, 1, 0, 0, 0] == 7.0
    assert not (layout.pages[[0, 1, 3, 4, 5]] == 0.5).any()


def test_a_page_major_cache_that_is_not_one_contiguous_buffer_has_no_host_blocks() -> None:
    every_other = numbered(2 * NUM_PAGES, *SPEC.shape)[::2]
    assert PageMajorLayout(every_other, SPEC).host_block(0) is None


def test_a_layer_major_cache_has_no_host_blocks() -> None:
    assert layer_major().host_block(0) is None


def test_page_major_layer_offset_is_where_that_layer_sits_in_the_cache_bytes() -> None:
    layout = page_major()
    raw = layout.pages.view(torch.uint8).reshape(-1)
    for page, layer in [(0, 0), (0, 1), (5, 1)]:
        offset = layout.layer_offset(page, layer)
        span = raw[offset : offset + SPEC.layer_bytes]
        assert torch.equal(span, layout.read_layer(layer, [page]).reshape(-1).view(torch.uint8))


def test_a_layer_major_cache_cannot_be_pushed_to() -> None:
    with pytest.raises(InvalidArgument, match="not one host segment"):
        layer_major().layer_offset(0, 0)


def test_page_major_refuses_pages_that_do_not_hold_blocks() -> None:
    wrong_tokens = torch.zeros(NUM_PAGES, 2, 2, 8, 2, 4)
    with pytest.raises(
        InvalidArgument, match=r"\(6, 2, 2, 8, 2, 4\).*expected \(6, 2, 2, 4, 2, 4\)"
    ):
        PageMajorLayout(wrong_tokens, SPEC)
    wrong_dtype = torch.zeros(NUM_PAGES, *SPEC.shape, dtype=torch.float16)
    with pytest.raises(InvalidArgument, match=r"torch.float16 do not hold.*float32"):
        PageMajorLayout(wrong_dtype, SPEC)


def test_layer_major_refuses_layers_that_do_not_hold_blocks() -> None:
    layers = layer_major().layers
    with pytest.raises(InvalidArgument, match="1 layer tensors for 2 layers"):
        LayerMajorLayout(layers[:1], SPEC)
    heads_first = layers[0].permute(0, 1, 3, 2, 4)
    with pytest.raises(
        InvalidArgument, match=r"layer 1 is \(2, 6, 2, 4, 4\); expected \[2, pages, 4, 2, 4\]"
    ):
        LayerMajorLayout([layers[0], heads_first], SPEC)
    with pytest.raises(InvalidArgument, match="layer 0 is"):
        LayerMajorLayout([layers[0][0], layers[1][0]], SPEC)  # no K/V dimension
    with pytest.raises(InvalidArgument, match=r"layer 1 is torch.float16; expected float32"):
        LayerMajorLayout([layers[0], layers[1].half()], SPEC)
    with pytest.raises(InvalidArgument, match=r"layer 1 is \(2, 3, 4, 2, 4\); layer 0 is \(2, 6,"):
        LayerMajorLayout([layers[0], layers[1][:, :3]], SPEC)


def test_layer_major_names_the_dtype_it_expected() -> None:
    halves = [t.half() for t in layer_major().layers]
    with pytest.raises(InvalidArgument, match=r"layer 0 is torch.float16; expected float32"):
        LayerMajorLayout(halves, SPEC)
