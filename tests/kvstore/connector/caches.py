"""Small CPU KV caches in both layouts, with recognisable content, and a page's bytes
read back in the store's block layout (``BlockSpec``)."""

from __future__ import annotations

import torch

from kvstore.connector.layouts import KVLayout, LayerMajorLayout, PageMajorLayout
from kvstore.layout import BlockSpec, KVDtype

# 2 layers x (K, V) x 4 tokens x 2 heads x 4 dims x 4 bytes = 512-byte blocks
SPEC = BlockSpec(num_layers=2, num_kv_heads=2, head_dim=4, dtype=KVDtype.FLOAT32, block_tokens=4)
NUM_PAGES = 6


def numbered(*shape: int, start: float = 1.0) -> torch.Tensor:
    """Every element distinct (so a misplaced layer, page, K or V shows)."""
    n = 1
    for s in shape:
        n *= s
    return torch.arange(start, start + n, dtype=SPEC.dtype.torch_dtype()).reshape(shape)


def page_major(num_pages: int = NUM_PAGES) -> PageMajorLayout:
    return PageMajorLayout(numbered(num_pages, *SPEC.shape), SPEC)


def layer_major(num_pages: int = NUM_PAGES) -> LayerMajorLayout:
    _, kv, tokens, heads, dim = SPEC.shape
    size = kv * num_pages * tokens * heads * dim
    layers = [
        numbered(kv, num_pages, tokens, heads, dim, start=1.0 + i * size)
        for i in range(SPEC.num_layers)
    ]
    return LayerMajorLayout(layers, SPEC)


def block_of(layout: KVLayout, page: int) -> torch.Tensor:
    """Page ``page`` of the cache as a store block ``[layer, 2, token, kv_head, head_dim]``
    (a copy, from the cache's own tensors, not through the layout under test)."""
    if isinstance(layout, PageMajorLayout):
        return layout.pages[page].clone()
    assert isinstance(layout, LayerMajorLayout)
    return torch.stack([t[:, page] for t in layout.layers])


def block_bytes_of(layout: KVLayout, page: int) -> bytes:
    return block_of(layout, page).contiguous().view(torch.uint8).numpy().tobytes()
