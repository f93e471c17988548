"""Plain summaries of admin answers: what the tables show and what ``--json`` prints."""

from __future__ import annotations

from typing import Any

from kvstore import codec
from kvstore._proto.strata.v1 import admin_pb2
from kvstore.metadata.base import NodeInfo
from kvstore.stats import is_profiling, namespace_label

PEER_SOURCE = "peer"  # a hit source beside the tiers: blocks another node supplied


def stats_summary(stats: admin_pb2.StatsResponse) -> dict[str, Any]:
    """One node's statistics as plain values (tiers, namespaces, moves).

    Hits are by source: each tier of this node, and ``peer`` for blocks other nodes
    supplied to this node's clients. The totals leave out namespaces of engines'
    start-up profiling (``kvstore.stats.PROFILING_SUFFIX``), counted apart.
    ``local_hit_blocks`` leaves the peer ones out (the holder counted them); cluster
    totals add only those, so each block counts once.
    """
    namespaces = []
    total_hits = total_misses = hit_tokens = peer_hits = 0
    profiling_hits = profiling_misses = 0
    for ns in stats.namespaces:
        hits = {codec.tier_from_pb(h.tier).value: h.blocks for h in ns.hits}
        if ns.peer_hit_blocks:
            hits[PEER_SOURCE] = ns.peer_hit_blocks
        misses = {_reason(m.reason): m.blocks for m in ns.misses}
        tokens = sum(h.tokens for h in ns.hits) + ns.peer_hit_tokens
        num_hits, num_misses = sum(hits.values()), sum(misses.values())
        profiling = is_profiling(ns.namespace.model_id)
        if profiling:  # an engine's start-up profiling: apart from users' traffic
            profiling_hits += num_hits
            profiling_misses += num_misses
        else:
            total_hits, total_misses, hit_tokens = (
                total_hits + num_hits,
                total_misses + num_misses,
                hit_tokens + tokens,
            )
            peer_hits += ns.peer_hit_blocks
        namespaces.append(
            {
                "namespace_id": ns.namespace_id.hex(),
                "namespace": namespace_label(ns.namespace.model_id, ns.namespace_id),
                "model_id": ns.namespace.model_id,
                "block_tokens": ns.namespace.block_tokens,
                "hit_rate": _rate(num_hits, num_misses),
                "hit_blocks": hits,
                "miss_blocks": misses,
                "tokens_saved": tokens,
                "tokens_missed": sum(m.tokens for m in ns.misses),
                "profiling": profiling,
            }
        )
    miss_reasons: dict[str, int] = {}
    for ns in stats.namespaces:
        if is_profiling(ns.namespace.model_id):
            continue
        for miss in ns.misses:
            reason = _reason(miss.reason)
            miss_reasons[reason] = miss_reasons.get(reason, 0) + miss.blocks
    return {
        "node_id": stats.node_id,
        "degraded": stats.degraded,
        "since_s": stats.since_s,
        "hit_rate": _rate(total_hits, total_misses),
        "hit_blocks": total_hits,
        "local_hit_blocks": total_hits - peer_hits,
        "peer_hit_blocks": peer_hits,
        "miss_blocks": total_misses,
        "tokens_saved": hit_tokens,
        "miss_reasons": miss_reasons,
        "profiling_hit_blocks": profiling_hits,
        "profiling_miss_blocks": profiling_misses,
        "pinned_blocks": stats.pinned_blocks,
        "tiers": [
            {
                "tier": codec.tier_from_pb(t.tier).value,
                "hit_blocks": t.hit_blocks,
                "used_bytes": t.used_bytes,
                "capacity_bytes": t.capacity_bytes,
                "blocks": t.num_blocks,
                "demoted_blocks": sum(m.blocks for m in stats.demotions if m.source == t.tier),
                "dropped_blocks": t.evicted_blocks,
                "corrupted_blocks": t.corrupted_blocks,
            }
            for t in stats.tiers
        ],
        "namespaces": namespaces,
        "demotions": _moves(stats.demotions),
        "promotions": _moves(stats.promotions),
        "put_blocks": stats.put_blocks,
        "put_slow_blocks": stats.put_slow_blocks,
        "put_skipped_blocks": stats.put_skipped_blocks,
        "peer_fetched_blocks": stats.peer_fetched_blocks,
        "torn_writes": stats.torn_writes,
        "reservations_reclaimed": stats.reservations_reclaimed,
        "open_reservations": stats.open_reservations,
        "read_pins": stats.read_pins,
    }


def cluster_summary(
    nodes: list[dict[str, Any]], unreachable: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """Totals over several nodes' summaries, each client-visible block counted once.

    A block one node fetched from another for its client is a ``peer`` hit there and a
    tier hit on the node that held it, so the totals add local hits and misses only.
    ``unreachable`` lists nodes that did not answer (their counts are missing).
    """
    hits = sum(n["local_hit_blocks"] for n in nodes)
    misses = sum(n["miss_blocks"] for n in nodes)
    return {
        "nodes": nodes,
        "unreachable": unreachable or [],
        "hit_rate": _rate(hits, misses),
        "hit_blocks": hits,
        "miss_blocks": misses,
        "tokens_saved": sum(n["tokens_saved"] for n in nodes) - sum(_peer_tokens(n) for n in nodes),
    }


def pin_rows(pins: admin_pb2.ListPinsResponse) -> list[dict[str, Any]]:
    """A node's pinned blocks as pinned prompts: chains of pinned blocks from one whose
    parent is not pinned, with their length, tiers and the least time left."""
    by_key = {p.key: p for p in pins.blocks}
    children: dict[bytes, list[admin_pb2.PinnedBlock]] = {}
    for pin in pins.blocks:
        children.setdefault(pin.parent, []).append(pin)
    rows = []
    for head in (p for p in pins.blocks if p.parent not in by_key):
        chain, block = [head], head
        while len(kids := children.get(block.key, [])) == 1:
            block = kids[0]
            chain.append(block)
        tiers: dict[str, int] = {}
        for pin in chain:
            tier = codec.tier_from_pb(pin.tier).value
            tiers[tier] = tiers.get(tier, 0) + 1
        rows.append(
            {
                "namespace": namespace_label(head.model_id, head.namespace_id),
                "first_key": head.key.hex(),
                "blocks": len(chain),
                "tiers": tiers,
                "ttl_s": round(min(p.ttl_s for p in chain), 1),
            }
        )
    return rows


def _peer_tokens(node: dict[str, Any]) -> int:
    return sum(
        ns["hit_blocks"].get(PEER_SOURCE, 0) * ns["block_tokens"] for ns in node["namespaces"]
    )


def node_summary(node: NodeInfo, now_s: float) -> dict[str, Any]:
    return {
        "node_id": node.node_id,
        "address": node.address,
        "host_id": node.host_id,
        "degraded": node.degraded,
        "heartbeat_age_s": round(max(0.0, now_s - node.heartbeat_s), 3),
        "tiers": [
            {"tier": t.tier.value, "used_bytes": t.used_bytes, "capacity_bytes": t.capacity_bytes}
            for t in node.tiers
        ],
        "data_addresses": list(node.data_addresses),
    }


def _reason(value: int) -> str:
    reason = codec.reason_from_pb(value)
    return reason.value if reason is not None else "none"


def _moves(moves: Any) -> list[dict[str, Any]]:
    return [
        {
            "source": codec.tier_from_pb(m.source).value,
            "target": codec.tier_from_pb(m.target).value,
            "blocks": m.blocks,
        }
        for m in moves
    ]


def _rate(hits: int, misses: int) -> float:
    return hits / (hits + misses) if hits + misses else 0.0
