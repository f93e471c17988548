"""Where a block's bytes live in an engine's paged KV cache.

The store's block layout is fixed (``kvstore.layout.BlockSpec``: layer-major, K then V,
``[layer, 2, token, kv_head, head_dim]``). An engine's cache need not be: the bundled
engine keeps one tensor of whole pages, vLLM one tensor per layer. A ``KVLayout``
translates between the two, one layer of a set of pages at a time, so the connector
moves any engine's KV without knowing its cache.

- ``PageMajorLayout``: ``pages[page, layer, 2, token, kv_head, head_dim]``, a page byte
  for byte a store block (the bundled engine). On a CPU a page *is* host memory: blocks
  move with no copy at all.
- ``LayerMajorLayout``: one ``[2, page, token, kv_head, head_dim]`` tensor per layer
  (vLLM's layout before its ``KVCacheLayout``): a layer of a page is two strided slices.
- ``HeadMajorLayout``: one ``[page, kv_head, token, 2 * head_dim]`` tensor per layer, the
  per-layer view every vLLM attention backend is given since ``KVCacheLayout`` (logical
  ``[L, B, H, N, C]``; the physical order is the tensor's strides). Backends differ in
  where K and V sit inside a head's ``[token, 2 * head_dim]``, the ``KVSplit``::

      TOKENS   (vLLM's CPU backend)          CHANNELS (FlashAttention, FlashInfer)
      head h:  K t0 | K t1 | ... | K tN-1    head h:  t0: K d0..dD-1 | V d0..dD-1
               V t0 | V t1 | ... | V tN-1             t1: K ...     | V ...
      (the head's rows viewed [2, N, D])      (each token's row viewed [2, D])
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

import torch

from kvstore.errors import InvalidArgument
from kvstore.layout import BlockSpec


class KVLayout(Protocol):
    spec: BlockSpec

    @property
    def device(self) -> torch.device: ...

    def host_block(self, page: int) -> memoryview | None:
        """The page's bytes, laid out as a store block, as host memory without a copy;
        None when the cache is not host memory in block layout (stage it instead)."""
        ...

    def read_layer(self, layer: int, pages: Sequence[int]) -> torch.Tensor:
        """Layer ``layer`` of ``pages``: ``[len(pages), 2, token, kv_head, head_dim]``."""
        ...

    def write_layer(self, layer: int, pages: Sequence[int], src: torch.Tensor) -> None:
        """Set layer ``layer`` of ``pages`` from ``src`` (shaped as ``read_layer``'s)."""
        ...

    def layer_offset(self, page: int, layer: int) -> int:
        """Byte offset of layer ``layer`` of ``page`` in the cache's host memory (a peer
        writes there over the data plane); the layer is ``spec.layer_bytes`` long."""
        ...


class PageMajorLayout:
    def __init__(self, pages: torch.Tensor, spec: BlockSpec) -> None:
        expected = (pages.shape[0], *spec.shape)
        if tuple(pages.shape) != expected or pages.dtype != spec.dtype.torch_dtype():
            raise InvalidArgument(
                f"pages {tuple(pages.shape)} {pages.dtype} do not hold blocks of {spec}"
                f" (expected {expected} {spec.dtype.value})"
            )
        self.pages = pages
        self.spec = spec

    @property
    def device(self) -> torch.device:
        return self.pages.device

    def host_block(self, page: int) -> memoryview | None:
        if self.pages.device.type != "cpu" or not self.pages.is_contiguous():
            return None
        return self.pages[page].view(torch.uint8).reshape(-1).numpy().data.cast("B")

    def read_layer(self, layer: int, pages: Sequence[int]) -> torch.Tensor:
        return self.pages[:, layer].index_select(0, _index(pages, self.pages.device))

    def write_layer(self, layer: int, pages: Sequence[int], src: torch.Tensor) -> None:
        index = _index(pages, self.pages.device)
        self.pages[:, layer].index_copy_(0, index, src.to(self.pages.device, non_blocking=True))

    def layer_offset(self, page: int, layer: int) -> int:
        return page * self.spec.block_bytes + self.spec.layer_range(layer).offset


class LayerMajorLayout:
    def __init__(self, layers: Sequence[torch.Tensor], spec: BlockSpec) -> None:
        if len(layers) != spec.num_layers:
            raise InvalidArgument(f"{len(layers)} layer tensors for {spec.num_layers} layers")
        first = layers[0]
        for i, t in enumerate(layers):
            if t.dim() != 5 or t.shape[0] != 2 or tuple(t.shape[2:]) != spec.shape[2:]:
                raise InvalidArgument(
                    f"layer {i} is {tuple(t.shape)}; expected [2, pages, {spec.block_tokens},"
                    f" {spec.num_kv_heads}, {spec.head_dim}]"
                )
            if t.dtype != spec.dtype.torch_dtype():
                raise InvalidArgument(f"layer {i} is {t.dtype}; expected {spec.dtype.value}")
            if t.shape != first.shape:
                raise InvalidArgument(
                    f"layer {i} is {tuple(t.shape)}; layer 0 is {tuple(first.shape)}"
                )
        self.layers = list(layers)
        self.spec = spec

    @property
    def device(self) -> torch.device:
        return self.layers[0].device

    def host_block(self, page: int) -> memoryview | None:
        return None  # a block's layers are spread over the layer tensors: stage them

    def read_layer(self, layer: int, pages: Sequence[int]) -> torch.Tensor:
        return self.layers[layer].index_select(1, _index(pages, self.device)).transpose(0, 1)

    def write_layer(self, layer: int, pages: Sequence[int], src: torch.Tensor) -> None:
        src = src.transpose(0, 1).to(self.device, non_blocking=True)
        self.layers[layer].index_copy_(1, _index(pages, self.device), src)

    def layer_offset(self, page: int, layer: int) -> int:
        raise InvalidArgument("a layer-major cache is not one host segment; peers cannot push")


class KVSplit(enum.Enum):
    """Where K and V sit inside one head of a page (see the module docstring)."""

    TOKENS = "tokens"  # [2, token, head_dim]: all of K's tokens, then all of V's
    CHANNELS = "channels"  # [token, 2, head_dim]: each token's K, then its V


class HeadMajorLayout:
    def __init__(self, layers: Sequence[torch.Tensor], spec: BlockSpec, split: KVSplit) -> None:
        if len(layers) != spec.num_layers:
            raise InvalidArgument(f"{len(layers)} layer tensors for {spec.num_layers} layers")
        _, _, tokens, heads, dim = spec.shape
        for i, t in enumerate(layers):
            if t.dim() != 4 or tuple(t.shape[1:]) != (heads, tokens, 2 * dim):
                raise InvalidArgument(
                    f"layer {i} is {tuple(t.shape)}; expected [pages, {heads}, {tokens},"
                    f" {2 * dim}] (kv_heads, block tokens, K and V head_dim)"
                )
            if t.dtype != spec.dtype.torch_dtype():
                raise InvalidArgument(f"layer {i} is {t.dtype}; expected {spec.dtype.value}")
            if t.shape != layers[0].shape:
                raise InvalidArgument(
                    f"layer {i} is {tuple(t.shape)}; layer 0 is {tuple(layers[0].shape)}"
                )
        self.layers = list(layers)
        self.spec = spec
        self.split = split

    @property
    def device(self) -> torch.device:
        return self.layers[0].device

    def host_block(self, page: int) -> memoryview | None:
        return None  # heads outermost, and layers apart: stage them

    def read_layer(self, layer: int, pages: Sequence[int]) -> torch.Tensor:
        # [n, head, token, 2 * dim]
        got = self.layers[layer].index_select(0, _index(pages, self.device))
        n, heads, tokens, width = got.shape
        if self.split is KVSplit.TOKENS:
            return got.reshape(n, heads, 2, tokens, width // 2).permute(0, 2, 3, 1, 4)
        return got.reshape(n, heads, tokens, 2, width // 2).permute(0, 3, 2, 1, 4)

    def write_layer(self, layer: int, pages: Sequence[int], src: torch.Tensor) -> None:
        n, _, tokens, heads, dim = src.shape  # [n, 2, token, head, dim]
        order = (0, 3, 1, 2, 4) if self.split is KVSplit.TOKENS else (0, 3, 2, 1, 4)
        rows = src.permute(*order).reshape(n, heads, tokens, 2 * dim)
        rows = rows.to(self.device, non_blocking=True)
        self.layers[layer].index_copy_(0, _index(pages, self.device), rows)

    def layer_offset(self, page: int, layer: int) -> int:
        raise InvalidArgument("a head-major cache is not in block layout; peers cannot push")


def _index(pages: Sequence[int], device: torch.device) -> torch.Tensor:
    """Pages as an index tensor (``index_select``/``index_copy_``: a gather or scatter
    along one dimension, several times faster on a CPU than advanced indexing)."""
    return torch.as_tensor(list(pages), dtype=torch.long, device=device)
