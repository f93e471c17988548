"""A blocking facade over ``StoreClient`` for code without an event loop.

The async client runs on a private event loop in a daemon thread; each method submits
one coroutine and waits for it (the call's own deadline bounds the wait).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from kvstore.client.calls import CallOptions
from kvstore.client.results import GetResult
from kvstore.client.store_client import Chain, NodePrefix, StoreClient
from kvstore.hashing import Namespace
from kvstore.metadata.base import NodeInfo
from kvstore.reservations import PutResult
from kvstore.types import BlockKey, Buffer, NamespaceId, TierKind

T = TypeVar("T")


class SyncStoreClient:
    def __init__(self, address: str, options: CallOptions | None = None, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="strata-client", daemon=True
        )
        self._thread.start()
        self._client: StoreClient = self._run(_make(address, options, kwargs))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> SyncStoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register_namespace(self, namespace: Namespace) -> NamespaceId:
        return self._run(self._client.register_namespace(namespace))

    def put(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        blocks: Sequence[Buffer],
        parent: BlockKey | None = None,
    ) -> PutResult:
        return self._run(self._client.put(ns_id, keys, blocks, parent))

    def put_many(self, ns_id: NamespaceId, chains: Sequence[Chain]) -> list[PutResult]:
        return self._run(self._client.put_many(ns_id, chains))

    def get(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        buffers: Sequence[Buffer] | None = None,
        *,
        local_only: bool = False,
    ) -> GetResult:
        return self._run(self._client.get(ns_id, keys, buffers, local_only=local_only))

    def get_many(
        self, ns_id: NamespaceId, key_lists: Sequence[Sequence[BlockKey]]
    ) -> list[GetResult]:
        return self._run(self._client.get_many(ns_id, key_lists))

    def lookup(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], *, local: bool = False
    ) -> list[NodePrefix]:
        return self._run(self._client.lookup(ns_id, keys, local=local))

    def exists(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> list[bool]:
        return self._run(self._client.exists(ns_id, keys))

    def remove(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> int:
        return self._run(self._client.remove(ns_id, keys))

    def pin(self, ns_id: NamespaceId, keys: Sequence[BlockKey], ttl_s: float | None = None) -> int:
        return self._run(self._client.pin(ns_id, keys, ttl_s))

    def unpin(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> int:
        return self._run(self._client.unpin(ns_id, keys))

    def nodes(self) -> list[NodeInfo]:
        return self._run(self._client.nodes())

    def evict(self, tier: TierKind, num_blocks: int) -> int:
        return self._run(self._client.evict(tier, num_blocks))


async def _make(address: str, options: CallOptions | None, kwargs: dict[str, Any]) -> StoreClient:
    return StoreClient(address, options, **kwargs)  # the channel binds to this loop
