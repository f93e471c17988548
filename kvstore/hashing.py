"""Namespaces, chained prefix keys and block checksums.

A block key names a *prefix*, not a chunk::

    root    = xxh3_128("strata.root.v1" ‖ namespace_id)
    key[i]  = xxh3_128(key[i-1] ‖ namespace_id ‖ tokens[i*B:(i+1)*B] as little-endian int32)
    key[-1] = root, or with a per-request cache salt (vLLM's ``cache_salt``):
    key[-1] = xxh3_128("strata.root.v1" ‖ namespace_id ‖ "strata.cache_salt.v1" ‖ salt)

so ``key[i]`` is useful only if ``key[0..i-1]`` are reachable too. Only full blocks are
keyed; a trailing partial block has no key. Everything here is a pure function of its
bytes: deterministic across processes, hosts, ``PYTHONHASHSEED`` values and Python
versions (``hash()`` is never used).

Cost: one xxh3-128 call per block over ``32 + 4*B`` bytes, plus one int32 conversion of
the whole token array; about a microsecond per 256-token block on one core.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import xxhash

from kvstore.errors import InvalidArgument
from kvstore.layout import BlockSpec
from kvstore.types import KEY_BYTES, BlockKey, Buffer, NamespaceId

if TYPE_CHECKING:
    import torch

    Tokens: TypeAlias = Sequence[int] | np.ndarray | torch.Tensor

_NAMESPACE_TAG = b"strata.ns.v1"
_ROOT_TAG = b"strata.root.v1"
_CACHE_SALT_TAG = b"strata.cache_salt.v1"
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True, slots=True)
class Namespace:
    """Blocks from different namespaces never match.

    Attributes:
        model_id: The model the KV came from (a checkpoint name or path digest).
        spec: KV layout, dtype and tokens per block.
        salt: Tenant salt; tenants that must not share a cache use distinct salts.
    """

    model_id: str
    spec: BlockSpec
    salt: str = ""
    _id: NamespaceId = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.model_id:
            raise InvalidArgument("Namespace.model_id must be a non-empty string")
        object.__setattr__(self, "_id", namespace_id(self))  # computed once: it is hot

    @property
    def id(self) -> NamespaceId:
        return self._id

    @property
    def block_bytes(self) -> int:
        return self.spec.block_bytes

    @property
    def block_tokens(self) -> int:
        return self.spec.block_tokens


def namespace_id(namespace: Namespace) -> NamespaceId:
    """Digest of every field of ``namespace``, each length-prefixed so none can alias."""
    spec = namespace.spec
    fields = (
        namespace.model_id,
        str(spec.num_layers),
        str(spec.num_kv_heads),
        str(spec.head_dim),
        spec.dtype.value,
        str(spec.block_tokens),
        namespace.salt,
    )
    parts = [_NAMESPACE_TAG]
    for value in fields:
        raw = value.encode("utf-8")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return NamespaceId(xxhash.xxh3_128_digest(b"".join(parts)))


def root_key(ns_id: NamespaceId, cache_salt: str = "") -> BlockKey:
    """The fixed parent of every namespace's first block (``key[-1]``); a non-empty
    ``cache_salt`` gives another root, so its requests share blocks only with requests
    of the same salt (and nobody without the salt can compute their keys)."""
    if not cache_salt:
        return BlockKey(xxhash.xxh3_128_digest(_ROOT_TAG + ns_id))
    salt = cache_salt.encode("utf-8")
    raw = b"".join((_ROOT_TAG, ns_id, _CACHE_SALT_TAG, struct.pack("<I", len(salt)), salt))
    return BlockKey(xxhash.xxh3_128_digest(raw))


def prefix_keys(
    ns_id: NamespaceId,
    tokens: Tokens,
    block_tokens: int,
    parent: BlockKey | None = None,
    cache_salt: str = "",
) -> list[BlockKey]:
    """Chained keys of every full block of ``tokens``.

    Args:
        ns_id: The namespace's id.
        tokens: Token ids as a list, a numpy or a torch integer array (one dimension).
        block_tokens: Tokens per block (``B``).
        parent: Key of the block just before ``tokens[0]``, to extend a chain; ``None``
            means ``tokens`` starts the sequence.
        cache_salt: A request's cache salt (see ``root_key``); only for a new sequence.

    Returns:
        ``len(tokens) // block_tokens`` keys; a trailing partial block is not keyed.

    Raises:
        InvalidArgument: non-integer or out-of-int32 tokens, or a malformed key or size.
    """
    check_key(ns_id, "namespace id")
    if block_tokens <= 0:
        raise InvalidArgument(f"block_tokens must be positive, got {block_tokens}")
    prev = root_key(ns_id, cache_salt) if parent is None else check_key(parent, "parent key")
    data = _as_int32_le(tokens)
    step = 4 * block_tokens
    keys: list[BlockKey] = []
    digest = xxhash.xxh3_128_digest
    for start in range(0, len(data) - step + 1, step):
        prev = BlockKey(digest(b"".join((prev, ns_id, data[start : start + step]))))
        keys.append(prev)
    return keys


def checksum(data: Buffer) -> int:
    """xxh3-64 of a block's bytes, stored with every block and checked across tiers."""
    return xxhash.xxh3_64_intdigest(data)


def check_key(key: bytes, what: str = "key") -> BlockKey:
    """Return ``key`` as a BlockKey, or raise if it is not exactly 16 bytes."""
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise InvalidArgument(f"{what} must be {KEY_BYTES} bytes, got {size}")
    return BlockKey(key)


def _as_int32_le(tokens: Tokens) -> memoryview:
    """Token ids as little-endian int32 bytes (no copy when they already are), refusing
    anything that would not fit."""
    # A torch tensor has .detach(); testing for it avoids importing torch for lists.
    array = tokens.detach().cpu().numpy() if hasattr(tokens, "detach") else np.asarray(tokens)
    if array.ndim != 1:
        raise InvalidArgument(f"tokens must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        return memoryview(b"")
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidArgument(f"tokens must be integers, got dtype {array.dtype}")
    if array.dtype.itemsize > 4 or array.dtype == np.uint32:
        low, high = int(array.min()), int(array.max())
        if low < _INT32_MIN or high > _INT32_MAX:
            raise InvalidArgument(f"token ids must fit in int32, got range [{low}, {high}]")
    return np.ascontiguousarray(array, dtype="<i4").data.cast("B")
