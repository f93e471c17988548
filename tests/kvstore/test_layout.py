import numpy as np
import pytest
import torch

from kvstore.errors import InvalidArgument
from kvstore.layout import BlockSpec, KVDtype

SPEC = BlockSpec(num_layers=4, num_kv_heads=2, head_dim=8, dtype=KVDtype.FLOAT16, block_tokens=16)


def test_sizes() -> None:
    assert SPEC.layer_bytes == 2 * 16 * 2 * 8 * 2
    assert SPEC.block_bytes == 4 * SPEC.layer_bytes


def test_view_is_zero_copy_and_layer_major() -> None:
    raw = bytearray(SPEC.block_bytes)
    kv = SPEC.view(raw)
    assert kv.shape == (4, 2, 16, 2, 8)
    assert kv.dtype == torch.float16
    kv[2, 1, 3, 1, 5] = 7.0  # layer 2, V, token 3, head 1, dim 5
    offset = 2 * SPEC.layer_bytes
    element = offset + (1 * 16 * 2 * 8 + 3 * 2 * 8 + 1 * 8 + 5) * 2
    assert np.frombuffer(raw, dtype=np.float16)[element // 2] == 7.0


def test_a_layer_is_one_contiguous_byte_range() -> None:
    raw = bytearray(SPEC.block_bytes)
    kv = SPEC.view(raw)
    kv[1].fill_(1.0)
    offset, length = SPEC.layer_bytes, SPEC.layer_bytes  # layer 1
    layer = np.frombuffer(raw, dtype=np.float16)
    assert (layer[offset // 2 : (offset + length) // 2] == 1.0).all()
    assert (layer[: offset // 2] == 0).all() and (layer[(offset + length) // 2 :] == 0).all()


def test_view_of_a_tensor() -> None:
    flat = torch.zeros(SPEC.block_bytes, dtype=torch.uint8)
    kv = SPEC.view(flat)
    kv[0, 0, 0, 0, 0] = 1.0
    assert flat.view(torch.float16)[0] == 1.0


def test_bad_specs_and_buffers() -> None:
    with pytest.raises(InvalidArgument, match="num_layers"):
        BlockSpec(0, 2, 8, KVDtype.FLOAT16, 16)
    with pytest.raises(InvalidArgument, match="dtype"):
        BlockSpec(1, 2, 8, "float16", 16)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="bytes"):
        SPEC.view(bytearray(SPEC.block_bytes - 1))
