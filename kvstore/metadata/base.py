"""The metadata service's Protocol and the values it trades in.

Two backends implement it: ``memory`` (embedded; one process, the single-machine
default) and ``redis`` (shared by every node of a cluster). Semantics both must keep:

* **Liveness.** ``register`` upserts a node with a TTL; a node that stops re-registering
  (heartbeat) disappears from ``nodes()`` once its TTL passes, and ``locate`` stops
  returning its entries. They linger in storage until ``reap_dead`` clears them (in
  bounded slices); a node that registers again before that gets them back, one that
  comes back after learns it from ``register`` returning False and republishes.
* **Index.** ``publish`` applies a batch of changes for one node in one round trip: a
  key now held in a tier, or no longer held. ``replace_index`` swaps a node's whole set
  of entries (after an outage, or at start). ``locate`` answers, per key, which live
  nodes hold it and in which tier, in one or two round trips whatever the key count.
* **Ordering.** The caller never overlaps ``publish`` and ``replace_index`` for one node
  (the node's publisher serializes them).
* **Failures.** A backend that cannot reach its store raises ``MetadataUnavailable``
  promptly (bounded by its timeout); it never hangs and never returns partial answers.
  Writes are atomic, so one that timed out either happened or not, and retrying is
  safe. Malformed input (a key that is not 16 bytes, a TTL that is not positive) raises
  ``InvalidArgument`` and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from kvstore.errors import KVStoreError
from kvstore.types import BlockKey, TierKind


class MetadataUnavailable(KVStoreError):
    """The metadata store cannot be reached; local operations go on (degraded)."""


@dataclass(frozen=True, slots=True)
class TierCapacity:
    tier: TierKind
    capacity_bytes: int
    used_bytes: int


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """How this node reaches a peer, as measured by its transfer engine."""

    peer_id: str
    transport: str  # local, shm or tcp
    address: str  # the data-plane address measured (tcp), or the peer's first one
    gbps: float  # bulk read throughput of a short probe
    rtt_us: float  # round trip of an empty request


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node announces about itself."""

    node_id: str
    address: str  # host:port of its gRPC store service
    host_id: str  # identity of the machine (nodes on one host can share memory)
    tiers: tuple[TierCapacity, ...] = ()
    started_s: float = 0.0  # wall clock
    heartbeat_s: float = 0.0  # wall clock of the last registration
    degraded: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    data_addresses: tuple[str, ...] = ()  # its data plane, one address per usable NIC
    links: tuple[LinkInfo, ...] = ()  # measured paths to its peers


class IndexChange(NamedTuple):
    key: BlockKey
    tier: TierKind | None  # None: the node no longer holds the key


class MetadataService(Protocol):
    async def register(self, node: NodeInfo, ttl_s: float) -> bool:
        """Add or refresh ``node``; it stays live for ``ttl_s`` seconds. Returns whether
        it was live already (False: new, or expired, so its entries may be gone)."""
        ...

    async def unregister(self, node_id: str) -> None:
        """Remove a node and all its index entries (clean shutdown)."""
        ...

    async def nodes(self) -> list[NodeInfo]:
        """Live nodes, sorted by node id."""
        ...

    async def publish(self, node_id: str, changes: Sequence[IndexChange]) -> None:
        """Apply index changes of one node, in order, in one round trip."""
        ...

    async def replace_index(
        self, node_id: str, entries: Iterable[tuple[BlockKey, TierKind]]
    ) -> None:
        """Make ``entries`` the node's whole index (drops its other entries)."""
        ...

    async def locate(self, keys: Sequence[BlockKey]) -> list[dict[str, TierKind]]:
        """For each key, the live nodes holding it and their tier (``node_id -> tier``)."""
        ...

    async def reap_dead(self, max_entries: int) -> bool:
        """Clear up to about ``max_entries`` entries of dead nodes; True if work remains."""
        ...

    async def close(self) -> None: ...
