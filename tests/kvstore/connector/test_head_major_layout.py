"""vLLM's per-layer ``[page, kv_head, token, 2 * head_dim]`` caches against the store's
block layout: where each K and V element of a page must land, for both ways backends
split K from V, on contiguous and on strided tensors."""

from __future__ import annotations

import pytest
import torch

from kvstore.connector.layouts import HeadMajorLayout, KVSplit
from kvstore.errors import InvalidArgument
from tests.kvstore.connector.caches import NUM_PAGES, SPEC, numbered

_, _, TOKENS, HEADS, DIM = SPEC.shape


def cache(split: KVSplit, *, strided: bool = False) -> HeadMajorLayout:
    size = NUM_PAGES * HEADS * TOKENS * 2 * DIM
    layers = []
    for i in range(SPEC.num_layers):
        if strided:  # token-major memory seen head-major, as FlashAttention's NHD
            raw = numbered(NUM_PAGES, TOKENS, HEADS, 2 * DIM, start=1.0 + i * size)
            layers.append(raw.permute(0, 2, 1, 3))
        else:
            layers.append(numbered(NUM_PAGES, HEADS, TOKENS, 2 * DIM, start=1.0 + i * size))
    return HeadMajorLayout(layers, SPEC, split)


def element(
    layout: HeadMajorLayout, layer: int, page: int, *, kv: int, token: int, head: int
) -> torch.Tensor:
    """One ``[head_dim]`` vector of the cache, indexed straight from vLLM's definition."""
    rows = layout.layers[layer][page, head]  # [token, 2 * dim]
    if layout.split is KVSplit.TOKENS:  # the head's memory as [2 * token, dim]
        row = kv * TOKENS + token
        return rows[row // 2, (row % 2) * DIM : (row % 2 + 1) * DIM]
    return rows[token, kv * DIM : (kv + 1) * DIM]


@pytest.mark.parametrize("split", list(KVSplit))
@pytest.mark.parametrize("strided", [False, True])
def test_read_layer_puts_every_k_and_v_where_the_store_block_has_it(
    split: KVSplit, strided: bool
) -> None:
    layout = cache(split, strided=strided)
    got = layout.read_layer(1, [4, 0])
    assert got.shape == (2, 2, TOKENS, HEADS, DIM)
    for row, page in zip(got, [4, 0], strict=True):
        for kv in range(2):
            for token in range(TOKENS):
                for head in range(HEADS):
                    want = element(layout, 1, page, kv=kv, token=token, head=head)
                    assert torch.equal(row[kv, token, head], want)


@pytest.mark.parametrize("split", list(KVSplit))
@pytest.mark.parametrize("strided", [False, True])
def test_write_layer_round_trips_and_touches_no_other_page_or_layer(
    split: KVSplit, strided: bool
) -> None:
    layout = cache(split, strided=strided)
    before = [t.clone() for t in layout.layers]
    src = -numbered(2, 2, TOKENS, HEADS, DIM)
    layout.write_layer(0, [3, 1], src)
    assert torch.equal(layout.read_layer(0, [3, 1]), src)
    others = [p for p in range(NUM_PAGES) if p not in (3, 1)]
    assert torch.equal(layout.layers[0][others], before[0][others])
    assert torch.equal(layout.layers[1], before[1])


def test_a_tensor_of_another_shape_or_dtype_is_refused_by_name() -> None:
    good = torch.zeros(NUM_PAGES, HEADS, TOKENS, 2 * DIM)
    with pytest.raises(InvalidArgument, match=r"layer 1 is \(6, 2, 4, 4\)"):
        HeadMajorLayout([good, torch.zeros(NUM_PAGES, HEADS, TOKENS, DIM)], SPEC, KVSplit.TOKENS)
    with pytest.raises(InvalidArgument, match="expected float32"):
        HeadMajorLayout([good, good.half()], SPEC, KVSplit.TOKENS)
    with pytest.raises(InvalidArgument, match="1 layer tensors"):
        HeadMajorLayout([good], SPEC, KVSplit.CHANNELS)
    assert HeadMajorLayout([good, good], SPEC, KVSplit.TOKENS).host_block(0) is None
