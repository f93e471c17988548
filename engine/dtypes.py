"""The floating-point types the engine computes in: one table, by name.

    name        torch            safetensors   bytes
    float32     torch.float32    F32           4
    float16     torch.float16    F16           2
    bfloat16    torch.bfloat16   BF16          2

A name is what ``config.json`` (``dtype`` or ``torch_dtype``), ``engine.dtype`` and the
checkpoint writer spell; it is also the store's ``kvstore.layout.KVDtype`` value of the
same type, since a KV page holds its model's dtype (``KVDtype(Dtype.X.value)``). Like
``KVDtype``, a member gives its ``torch_dtype()`` and ``itemsize``.
"""

from __future__ import annotations

import enum

import torch


class Dtype(enum.StrEnum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"

    def torch_dtype(self) -> torch.dtype:
        return _TORCH[self]

    @property
    def itemsize(self) -> int:
        return self.torch_dtype().itemsize

    @property
    def safetensors(self) -> str:
        """The dtype's name in a safetensors header."""
        return _SAFETENSORS[self]

    @classmethod
    def named(cls, name: str) -> Dtype:
        """Raises ``ValueError`` naming the choices for an unknown name."""
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"dtype {name!r}: expected one of {', '.join(NAMES)}") from None

    @classmethod
    def of(cls, dtype: torch.dtype) -> Dtype:
        """Raises ``ValueError`` for a torch dtype the engine does not compute in."""
        for member in cls:
            if member.torch_dtype() == dtype:
                return member
        raise ValueError(f"dtype {dtype}: expected one of {', '.join(NAMES)}")


_TORCH = {
    Dtype.FLOAT32: torch.float32,
    Dtype.FLOAT16: torch.float16,
    Dtype.BFLOAT16: torch.bfloat16,
}
_SAFETENSORS = {Dtype.FLOAT32: "F32", Dtype.FLOAT16: "F16", Dtype.BFLOAT16: "BF16"}
NAMES = tuple(d.value for d in Dtype)
