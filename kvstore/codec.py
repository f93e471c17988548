"""Conversions between protobuf messages and the store's own types.

Decoding validates as it goes and names the offending field in ``InvalidArgument``
(``keys[3]: must be 16 bytes, got 5``), so every bad request becomes INVALID_ARGUMENT
with a message a client can act on. Used by both the server and the client.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvstore._proto.strata.v1 import admin_pb2, common_pb2
from kvstore.errors import InvalidArgument
from kvstore.hashing import Namespace
from kvstore.layout import BlockSpec, KVDtype
from kvstore.metadata.base import LinkInfo, NodeInfo, TierCapacity
from kvstore.stats import StatsSnapshot
from kvstore.types import (
    KEY_BYTES,
    MAX_KEYS_PER_REQUEST,
    BlockKey,
    MissReason,
    NamespaceId,
    TierKind,
)

_TIER_TO_PB = {
    TierKind.HBM: common_pb2.TIER_HBM,
    TierKind.DRAM: common_pb2.TIER_DRAM,
    TierKind.NVME: common_pb2.TIER_NVME,
}
_TIER_FROM_PB = {v: k for k, v in _TIER_TO_PB.items()}
_REASON_TO_PB = {
    None: common_pb2.MISS_REASON_NONE,
    MissReason.NEVER_STORED: common_pb2.MISS_REASON_NEVER_STORED,
    MissReason.EVICTED: common_pb2.MISS_REASON_EVICTED,
    MissReason.REMOVED: common_pb2.MISS_REASON_REMOVED,
    MissReason.CORRUPTED: common_pb2.MISS_REASON_CORRUPTED,
    MissReason.NAMESPACE_MISMATCH: common_pb2.MISS_REASON_NAMESPACE_MISMATCH,
    MissReason.NODE_LOST: common_pb2.MISS_REASON_NODE_LOST,
}
_REASON_FROM_PB = {v: k for k, v in _REASON_TO_PB.items()}


def tier_to_pb(tier: TierKind) -> common_pb2.Tier:
    return _TIER_TO_PB[tier]


def tier_from_pb(value: int, field: str = "tier") -> TierKind:
    try:
        return _TIER_FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(f"{field}: must be one of hbm, dram, nvme, got {value}") from None


def reason_to_pb(reason: MissReason | None) -> common_pb2.MissReason:
    return _REASON_TO_PB[reason]


def reason_from_pb(value: int) -> MissReason | None:
    return _REASON_FROM_PB.get(value)  # type: ignore[call-overload, no-any-return]


def decode_key(raw: bytes, field: str) -> BlockKey:
    if len(raw) != KEY_BYTES:
        raise InvalidArgument(f"{field}: must be {KEY_BYTES} bytes, got {len(raw)}")
    return BlockKey(raw)


def decode_keys(raws: Sequence[bytes], field: str = "keys") -> list[BlockKey]:
    if len(raws) > MAX_KEYS_PER_REQUEST:
        raise InvalidArgument(f"{field}: {len(raws)} keys; at most {MAX_KEYS_PER_REQUEST}")
    return [decode_key(raw, f"{field}[{i}]") for i, raw in enumerate(raws)]


def decode_optional_key(raw: bytes, field: str) -> BlockKey | None:
    return decode_key(raw, field) if raw else None


def decode_namespace_id(raw: bytes) -> NamespaceId:
    if len(raw) != KEY_BYTES:
        raise InvalidArgument(f"namespace_id: must be {KEY_BYTES} bytes, got {len(raw)}")
    return NamespaceId(raw)


def namespace_to_pb(namespace: Namespace, *, with_salt: bool = True) -> common_pb2.Namespace:
    """``with_salt=False`` for anything a node sends out: a salt never leaves the node
    (it is what makes the namespace's keys unguessable; the namespace id names it)."""
    spec = namespace.spec
    return common_pb2.Namespace(
        model_id=namespace.model_id,
        num_layers=spec.num_layers,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        dtype=spec.dtype.value,
        block_tokens=spec.block_tokens,
        salt=namespace.salt if with_salt else "",
    )


def namespace_from_pb(message: common_pb2.Namespace) -> Namespace:
    try:
        dtype = KVDtype(message.dtype)
    except ValueError:
        allowed = ", ".join(d.value for d in KVDtype)
        raise InvalidArgument(f"namespace.dtype: must be one of {allowed}") from None
    for name in ("num_layers", "num_kv_heads", "head_dim", "block_tokens"):
        if getattr(message, name) == 0:
            raise InvalidArgument(f"namespace.{name}: must be positive")
    if not message.model_id:
        raise InvalidArgument("namespace.model_id: must not be empty")
    spec = BlockSpec(
        message.num_layers, message.num_kv_heads, message.head_dim, dtype, message.block_tokens
    )
    return Namespace(message.model_id, spec, message.salt)


def stats_to_pb(
    node_id: str, stats: StatsSnapshot, namespaces: Sequence[Namespace]
) -> admin_pb2.StatsResponse:
    by_id = {ns.id: ns for ns in namespaces}
    hits = stats.hit_blocks_by_tier()
    response = admin_pb2.StatsResponse(
        node_id=node_id,
        torn_writes=stats.torn_writes,
        reservations_reclaimed=stats.reservations_reclaimed,
        put_blocks=stats.put_blocks,
        put_slow_blocks=stats.put_slow_blocks,
        put_skipped_blocks=stats.put_skipped_blocks,
        since_s=stats.since_s,
        pinned_blocks=stats.num_pinned_blocks,
        open_reservations=stats.num_open_reservations,
        read_pins=stats.num_read_pins,
    )
    for usage in stats.tiers:
        response.tiers.add(
            tier=tier_to_pb(usage.tier),
            capacity_bytes=usage.capacity_bytes,
            used_bytes=usage.used_bytes,
            num_blocks=usage.num_blocks,
            hit_blocks=hits.get(usage.tier, 0),
            evicted_blocks=stats.evictions.get(usage.tier, 0),
            corrupted_blocks=stats.corrupted_blocks.get(usage.tier, 0),
        )
    for ns in stats.namespaces:
        entry = response.namespaces.add(
            namespace_id=ns.namespace_id,
            peer_hit_blocks=ns.peer_hit_blocks,
            peer_hit_tokens=ns.peer_hit_blocks * ns.block_tokens,
        )
        if ns.namespace_id in by_id:
            entry.namespace.CopyFrom(namespace_to_pb(by_id[ns.namespace_id], with_salt=False))
        for tier, blocks in ns.hit_blocks.items():
            entry.hits.add(tier=tier_to_pb(tier), blocks=blocks, tokens=ns.hit_tokens[tier])
        for reason, blocks in ns.miss_blocks.items():
            entry.misses.add(
                reason=reason_to_pb(reason), blocks=blocks, tokens=ns.miss_tokens[reason]
            )
    for (source, target), blocks in stats.demotions.items():
        response.demotions.add(source=tier_to_pb(source), target=tier_to_pb(target), blocks=blocks)
    for (source, target), blocks in stats.promotions.items():
        response.promotions.add(source=tier_to_pb(source), target=tier_to_pb(target), blocks=blocks)
    return response


def node_to_pb(node: NodeInfo) -> admin_pb2.NodeInfo:
    message = admin_pb2.NodeInfo(
        node_id=node.node_id,
        address=node.address,
        host_id=node.host_id,
        started_s=node.started_s,
        heartbeat_s=node.heartbeat_s,
        degraded=node.degraded,
        data_addresses=node.data_addresses,
    )
    for link in node.links:
        message.links.add(
            peer_id=link.peer_id,
            transport=link.transport,
            address=link.address,
            gbps=link.gbps,
            rtt_us=link.rtt_us,
        )
    for tier in node.tiers:
        message.tiers.add(
            tier=tier_to_pb(tier.tier),
            capacity_bytes=tier.capacity_bytes,
            used_bytes=tier.used_bytes,
        )
    return message


def node_from_pb(message: admin_pb2.NodeInfo) -> NodeInfo:
    return NodeInfo(
        node_id=message.node_id,
        address=message.address,
        host_id=message.host_id,
        tiers=tuple(
            TierCapacity(tier_from_pb(t.tier), t.capacity_bytes, t.used_bytes)
            for t in message.tiers
        ),
        started_s=message.started_s,
        heartbeat_s=message.heartbeat_s,
        degraded=message.degraded,
        data_addresses=tuple(message.data_addresses),
        links=tuple(
            LinkInfo(k.peer_id, k.transport, k.address, k.gbps, k.rtt_us) for k in message.links
        ),
    )
