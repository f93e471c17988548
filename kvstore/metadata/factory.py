"""Pick the metadata backend named by the configuration.

Invariant: the caller owns what it gets and must ``close`` it; nothing is shared or cached.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kvstore.config import MetadataBackend
from kvstore.errors import ConfigError
from kvstore.metadata.base import MetadataService
from kvstore.metadata.memory import MemoryMetadata
from kvstore.metadata.redis import RedisMetadata


def open_metadata(
    backend: MetadataBackend | str,
    *,
    redis_url: str,
    key_prefix: str,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> MetadataService:
    """A new ``memory`` or ``redis`` metadata backend (``redis`` connects lazily).

    Args:
        backend: ``MetadataBackend`` or its value, "memory" or "redis".
        redis_url: where Redis listens (``redis`` only).
        key_prefix: namespace of every Redis key (``redis`` only).
        timeout_s: bound on each Redis round trip (``redis`` only).
        clock: monotonic clock for TTLs (``memory`` only; Redis keeps its own time).

    Raises:
        ConfigError: ``backend`` names no backend.
    """
    value = backend.value if isinstance(backend, MetadataBackend) else backend
    if value == MetadataBackend.MEMORY.value:
        return MemoryMetadata(clock=clock)
    if value == MetadataBackend.REDIS.value:
        return RedisMetadata(redis_url, key_prefix=key_prefix, timeout_s=timeout_s)
    allowed = ", ".join(repr(b.value) for b in MetadataBackend)
    raise ConfigError("metadata.backend", f"must be one of {allowed}, got {backend!r}")
