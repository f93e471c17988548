"""Bounded, parallel lookups of a prompt's keys on a set of store nodes, for a router.

A local-scope ``Lookup`` goes to every node at once, each answering for itself from its
own index (no metadata round trip, no publishing lag), all within ``timeout_s``: a
router places a request on what the nodes hold now or, late, without them. A node that
does not know the namespace yet holds nothing; a node that fails is answered ``None``.
``lookups`` counts the rounds: ``answered`` (every node), ``failed`` (some node failed),
``timed_out``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.client.store_client import NodePrefix
from kvstore.errors import KVStoreError, NotFound
from kvstore.types import BlockKey, NamespaceId

logger = logging.getLogger(__name__)


class StoreLookups:
    def __init__(
        self,
        addresses: Sequence[str],
        namespace_id: NamespaceId,
        *,
        timeout_s: float,
        token: str = "",
    ) -> None:
        self.namespace_id = namespace_id
        self.timeout_s = timeout_s
        options = CallOptions(token=token, timeout_s=max(timeout_s, 0.5), retries=0)
        self.clients = {a: StoreClient(a, options) for a in addresses}
        self.lookups = {"answered": 0, "timed_out": 0, "failed": 0}

    async def ask(self, keys: Sequence[BlockKey]) -> dict[str, list[NodePrefix] | None] | None:
        """Node address -> what it holds of ``keys`` (``None``: it failed); ``None`` when
        the nodes did not all answer in time, or there are none."""
        if not self.clients:
            return None
        calls = [self._ask(client, keys) for client in self.clients.values()]
        try:
            answers = await asyncio.wait_for(asyncio.gather(*calls), self.timeout_s)
        except TimeoutError:
            self.lookups["timed_out"] += 1
            return None
        self.lookups["failed" if None in answers else "answered"] += 1
        return dict(zip(self.clients, answers, strict=True))

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()

    async def _ask(self, client: StoreClient, keys: Sequence[BlockKey]) -> list[NodePrefix] | None:
        try:
            return await client.lookup(self.namespace_id, keys, local=True)
        except NotFound:  # the namespace is not registered there yet: nothing cached
            return []
        except KVStoreError as exc:
            logger.debug("lookup on %s failed: %s", client.address, exc)
            return None
