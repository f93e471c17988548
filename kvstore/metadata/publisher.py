"""A node's side of the metadata service: heartbeats and batched index publishing.

The index's observer records every residency change into a buffer (latest change per
key wins); a background task flushes the buffer every ``publish_interval_s`` in one
``publish`` call, so a put costs no metadata round trip of its own. Another task
re-registers the node every ``heartbeat_interval_s``, refreshing its TTL.

Every heartbeat also clears a bounded slice of dead nodes' leftover entries
(``reap_dead``); a node whose own registration had expired (a long pause) learns it from
``register`` and republishes its whole index.

Degraded mode: when the metadata service is unreachable, the node keeps serving its own
blocks, reports ``degraded``, and drops the buffered changes (they would be stale).
When a registration succeeds again, it re-publishes its whole index with
``replace_index`` before sending deltas again, so the global index converges to the
node's real contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from kvstore.metadata.base import IndexChange, MetadataService, MetadataUnavailable, NodeInfo
from kvstore.store import NodeStore
from kvstore.types import BlockKey, TierKind

logger = logging.getLogger(__name__)

REAP_BUDGET_ENTRIES = 2_000  # dead nodes' entries each heartbeat clears, at most


class IndexPublisher:
    def __init__(
        self,
        store: NodeStore,
        metadata: MetadataService,
        describe: Callable[[bool], NodeInfo],
        *,
        node_ttl_s: float,
        heartbeat_interval_s: float,
        publish_interval_s: float,
    ) -> None:
        self.store = store
        self.metadata = metadata
        self._describe = describe
        self._ttl_s = node_ttl_s
        self._heartbeat_s = heartbeat_interval_s
        self._publish_s = publish_interval_s
        self._pending: dict[BlockKey, TierKind | None] = {}
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()  # a full publish and deltas never interleave
        self._tasks: list[asyncio.Task[None]] = []
        self.degraded = False
        self._needs_full_publish = True

    async def start(self) -> None:
        """Register (or come up degraded), publish the whole index, start the loops."""
        self.store.index.observer = self._observe
        await self._heartbeat_once()
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="strata-heartbeat"),
            asyncio.create_task(self._publish_loop(), name="strata-publish"),
        ]

    async def stop(self, *, unregister: bool = True) -> None:
        """Flush what is pending, stop the loops, and leave the cluster cleanly."""
        self.store.index.observer = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(MetadataUnavailable):
            await self.flush()
            if unregister:
                await self.metadata.unregister(self._describe(self.degraded).node_id)

    async def flush(self) -> None:
        """Publish buffered changes now (one round trip)."""
        if self._needs_full_publish or not self._pending:
            return
        changes = [IndexChange(key, tier) for key, tier in self._pending.items()]
        self._pending.clear()
        try:
            async with self._write_lock:
                await self.metadata.publish(self._node_id, changes)
        except MetadataUnavailable as exc:
            self._enter_degraded(exc)

    @property
    def _node_id(self) -> str:
        return self._describe(self.degraded).node_id

    def _observe(self, key: BlockKey, tier: TierKind | None) -> None:
        if self._needs_full_publish:
            return  # the next full publish snapshots the index anyway
        self._pending[key] = tier
        self._wake.set()

    async def _publish_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._publish_s)  # gather a batch
            self._wake.clear()
            await self.flush()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            await self._heartbeat_once()

    async def _heartbeat_once(self) -> None:
        try:
            was_live = await self.metadata.register(self._describe(self.degraded), self._ttl_s)
            if not was_live and not self._needs_full_publish:
                logger.warning("registration had expired; publishing the whole index again")
                self._needs_full_publish = True
            if self._needs_full_publish:
                await self._publish_all()
            await self.metadata.reap_dead(REAP_BUDGET_ENTRIES)
        except MetadataUnavailable as exc:
            self._enter_degraded(exc)
            return
        if self.degraded:
            logger.warning("metadata service reachable again; node no longer degraded")
            self.degraded = False
            await self.metadata.register(self._describe(False), self._ttl_s)

    async def _publish_all(self) -> None:
        entries = [(meta.key, meta.tier) for meta in self.store.index.blocks()]
        self._pending.clear()
        self._needs_full_publish = False  # changes from now on are deltas on this snapshot
        try:
            async with self._write_lock:
                await self.metadata.replace_index(self._node_id, entries)
        except MetadataUnavailable:
            self._needs_full_publish = True
            raise
        logger.info("published the whole index (%d blocks)", len(entries))

    def _enter_degraded(self, exc: Exception) -> None:
        if not self.degraded:
            logger.warning("metadata service unreachable (%s); serving local blocks only", exc)
        self.degraded = True
        self._needs_full_publish = True
        self._pending.clear()
