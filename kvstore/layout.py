"""Byte layout of one KV block.

A block holds K and V of ``block_tokens`` tokens for every layer, layer-major, so that one
layer is one contiguous byte range (layer-wise transfer moves sub-ranges)::

    block  = | layer 0 | layer 1 | ... | layer L-1 |
    layer  = | K[token][kv_head][head_dim] | V[token][kv_head][head_dim] |
    bytes  = L * 2 * block_tokens * kv_heads * head_dim * itemsize

``BlockSpec.view`` reinterprets any buffer of ``block_bytes`` bytes as a tensor of shape
``[layer, 2, token, kv_head, head_dim]`` without copying.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from kvstore.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

    from kvstore.types import Buffer


class KVDtype(enum.Enum):
    """Element types a KV cache may use; the value is the torch dtype's name."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT8_E4M3 = "float8_e4m3fn"

    @property
    def itemsize(self) -> int:
        return _ITEMSIZES[self]

    def torch_dtype(self) -> torch.dtype:
        import torch

        dtype: torch.dtype = getattr(torch, self.value)
        return dtype

    @classmethod
    def of(cls, dtype: torch.dtype) -> KVDtype:
        """The KV dtype of a torch dtype. Raises ``InvalidArgument`` for one it lacks."""
        for kind in cls:
            if kind.torch_dtype() == dtype:
                return kind
        raise InvalidArgument(f"unsupported KV cache dtype {dtype}")


_ITEMSIZES = {KVDtype.FLOAT32: 4, KVDtype.FLOAT16: 2, KVDtype.BFLOAT16: 2, KVDtype.FLOAT8_E4M3: 1}


class ByteRange(NamedTuple):
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """Shape of one KV block: what a model's cache looks like for ``block_tokens`` tokens."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: KVDtype
    block_tokens: int

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "block_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidArgument(f"BlockSpec.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.dtype, KVDtype):
            raise InvalidArgument(f"BlockSpec.dtype must be a KVDtype, got {self.dtype!r}")

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.num_layers, 2, self.block_tokens, self.num_kv_heads, self.head_dim)

    @property
    def layer_bytes(self) -> int:
        return 2 * self.block_tokens * self.num_kv_heads * self.head_dim * self.dtype.itemsize

    @property
    def block_bytes(self) -> int:
        return self.num_layers * self.layer_bytes

    def layer_range(self, layer: int) -> ByteRange:
        """Byte range of layer ``layer`` (K then V) inside a block."""
        if not 0 <= layer < self.num_layers:
            raise InvalidArgument(f"layer must be in [0, {self.num_layers}), got {layer}")
        return ByteRange(layer * self.layer_bytes, self.layer_bytes)

    def view(self, buffer: Buffer | torch.Tensor) -> torch.Tensor:
        """View a block's bytes as ``[layer, 2, token, kv_head, head_dim]`` without a copy.

        Args:
            buffer: Exactly ``block_bytes`` bytes: a writable buffer (memoryview, bytearray,
                numpy array, mmap slice) or a uint8 torch tensor on any device.

        Raises:
            InvalidArgument: the buffer has the wrong size.
        """
        import torch

        if isinstance(buffer, torch.Tensor):
            raw = buffer.reshape(-1)
            size = raw.numel() * raw.element_size()
            if raw.dtype != torch.uint8:
                raw = raw.view(torch.uint8)
        else:
            size = memoryview(buffer).nbytes
            raw = torch.frombuffer(buffer, dtype=torch.uint8) if size else torch.empty(0)
        if size != self.block_bytes:
            raise InvalidArgument(f"block buffer must be {self.block_bytes} bytes, got {size}")
        return raw.view(self.dtype.torch_dtype()).view(self.shape)
