"""Checks of caller-supplied keys and buffers, raising ``InvalidArgument`` with a message
that says which item is wrong and why."""

from __future__ import annotations

from collections.abc import Sequence

from kvstore.errors import InvalidArgument
from kvstore.hashing import check_key
from kvstore.types import BlockKey


def check_keys(keys: Sequence[BlockKey], what: str = "key") -> None:
    for key in keys:
        check_key(key, what)


def readable(block: object, block_bytes: int, i: int) -> memoryview:
    """``block`` as bytes of exactly ``block_bytes``."""
    try:
        view = memoryview(block).cast("B")  # type: ignore[arg-type]
    except TypeError as exc:
        raise InvalidArgument(f"block {i} is not a buffer: {type(block).__name__}") from exc
    if view.nbytes != block_bytes:
        raise InvalidArgument(f"block {i} is {view.nbytes} bytes, namespace needs {block_bytes}")
    return view


def writable(buffer: object, block_bytes: int, i: int) -> memoryview:
    """``buffer`` as a writable byte view of at least ``block_bytes``."""
    try:
        view = memoryview(buffer).cast("B")  # type: ignore[arg-type]
    except TypeError as exc:
        raise InvalidArgument(f"buffer {i} is not a buffer: {type(buffer).__name__}") from exc
    if view.readonly:
        raise InvalidArgument(f"buffer {i} is read-only")
    if view.nbytes < block_bytes:
        raise InvalidArgument(f"buffer {i} is {view.nbytes} bytes, blocks are {block_bytes}")
    return view
