"""``kvstore admin``: statistics, nodes, lookups, pins and eviction, as tables or JSON.

    kvstore admin [--address HOST:PORT | --cluster REDIS_URL] [--token T] [--tls-ca PEM]
                  stats | nodes | lookup | pin | unpin | evict | flush | top | config
                  | remove-namespace [--json]

Against one node (``--address``, default 127.0.0.1:7600, or $STRATA_ADDRESS) or every
live node of a cluster (``--cluster``, the metadata Redis URL). ``lookup``, ``pin`` and
``unpin`` take a prompt as ``--text`` (tokenized byte by byte, like the tiny model) or
as a file of token ids (``--tokens``: whitespace- or comma-separated integers, or JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from kvstore.admin import render
from kvstore.admin.summary import cluster_summary, node_summary, stats_summary
from kvstore.client.calls import CallOptions
from kvstore.client.store_client import StoreClient
from kvstore.errors import InvalidArgument, KVStoreError, NotFound
from kvstore.hashing import Namespace, prefix_keys
from kvstore.metadata.redis import RedisMetadata
from kvstore.types import BlockKey, TierKind


def add_admin_parser(commands: Any) -> None:
    admin = commands.add_parser("admin", help="inspect and steer a node or a cluster")
    admin.add_argument("--address", default=os.environ.get("STRATA_ADDRESS", "127.0.0.1:7600"))
    admin.add_argument("--cluster", metavar="REDIS_URL", help="every live node of a cluster")
    admin.add_argument("--token", default=os.environ.get("STRATA_TOKEN", ""), help="bearer token")
    admin.add_argument("--tls-ca", type=Path, help="CA certificate (PEM) to trust; enables TLS")
    admin.add_argument("--timeout", type=float, default=5.0, help="seconds per call")
    admin.add_argument("--json", action="store_true", help="machine-readable output")
    verbs = admin.add_subparsers(dest="verb", required=True)
    verbs.add_parser("stats", help="hit rates, tokens saved, tiers, moves")
    verbs.add_parser("nodes", help="live nodes, their tiers and heartbeats")
    verbs.add_parser("topology", help="how each node reaches the others: transport, path, speed")
    verbs.add_parser("config", help="a node's effective configuration")
    for name, text in (
        ("lookup", "how long a prompt's prefix is cached, where"),
        ("pin", "keep a prompt's cached prefix resident"),
        ("unpin", "release a pin"),
    ):
        verb = verbs.add_parser(name, help=text)
        source = verb.add_mutually_exclusive_group(required=True)
        source.add_argument("--text", help="prompt text (byte-level tokens)")
        source.add_argument("--tokens", type=Path, help="file of token ids")
        verb.add_argument("--model-id", help="namespace by model id (if one matches)")
        verb.add_argument("--namespace-id", help="namespace by id (hex)")
        if name == "pin":
            verb.add_argument("--ttl", type=float, default=None, help="seconds (default: server's)")
    evict = verbs.add_parser("evict", help="push blocks out of a tier")
    evict.add_argument("--tier", choices=[t.value for t in TierKind], required=True)
    evict.add_argument("--blocks", type=int, required=True)
    flush = verbs.add_parser("flush", help="push every evictable block out (of one tier)")
    flush.add_argument("--tier", choices=[t.value for t in TierKind])
    remove = verbs.add_parser("remove-namespace", help="drop a namespace and all its blocks")
    remove.add_argument("--model-id", help="namespace by model id (if one matches)")
    remove.add_argument("--namespace-id", help="namespace by id (hex)")
    top = verbs.add_parser("top", help="a live view, refreshed every --interval seconds")
    top.add_argument("--interval", type=float, default=1.0)
    top.add_argument("--count", type=int, default=0, help="stop after N refreshes (0: never)")
    admin.set_defaults(run=run_admin)


def run_admin(args: argparse.Namespace) -> int:
    console = Console()
    try:
        asyncio.run(_VERBS[args.verb](args, console))
    except KVStoreError as exc:
        print(f"kvstore admin: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


@asynccontextmanager
async def _clients(args: argparse.Namespace) -> AsyncIterator[list[StoreClient]]:
    options = CallOptions(token=args.token, tls_ca_file=args.tls_ca, timeout_s=args.timeout)
    addresses = [args.address]
    if args.cluster:
        metadata = RedisMetadata(args.cluster, timeout_s=args.timeout)
        try:
            addresses = [node.address for node in await metadata.nodes()]
        finally:
            await metadata.close()
        if not addresses:
            raise NotFound(f"no live node registered in {args.cluster}")
    clients = [StoreClient(address, options) for address in addresses]
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()


async def _stats(args: argparse.Namespace, console: Console) -> None:
    async with _clients(args) as clients:
        summaries = [stats_summary(await c.stats()) for c in clients]
    if args.json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else cluster_summary(summaries)))
    else:
        for summary in summaries:
            render.stats(console, summary)
        if len(summaries) > 1:
            render.cluster_totals(console, cluster_summary(summaries))


async def _nodes(args: argparse.Namespace, console: Console) -> None:
    async with _clients(args) as clients:
        nodes = await clients[0].nodes()
    now = time.time()
    rows = [node_summary(n, now) for n in nodes]
    if args.json:
        print(json.dumps(rows))
    else:
        render.nodes(console, rows)


async def _topology(args: argparse.Namespace, console: Console) -> None:
    async with _clients(args) as clients:
        nodes = await clients[0].nodes()
    rows = [
        {
            "node_id": node.node_id,
            "peer_id": link.peer_id,
            "transport": link.transport,
            "address": link.address,
            "gbps": link.gbps,
            "rtt_us": link.rtt_us,
        }
        for node in nodes
        for link in node.links
    ]
    data = {n.node_id: list(n.data_addresses) for n in nodes}
    if args.json:
        print(json.dumps({"data_addresses": data, "links": rows}))
    else:
        render.topology(console, data, rows)


async def _config(args: argparse.Namespace, console: Console) -> None:
    async with _clients(args) as clients:
        values = await clients[0].config()
    print(json.dumps(values, indent=None if args.json else 2))


async def _lookup(args: argparse.Namespace, console: Console) -> None:
    async with _clients(args) as clients:
        client = clients[0]
        namespace, keys, num_tokens = await _prompt_keys(args, client)
        holders = await client.lookup(namespace.id, keys)
    rows = [
        {
            "node_id": h.node_id,
            "address": h.address,
            "blocks": h.num_blocks,
            "tokens": h.num_blocks * namespace.block_tokens,
            "tiers": {t.value: h.tiers.count(t) for t in TierKind if t in h.tiers},
        }
        for h in holders
    ]
    result = {
        "model_id": namespace.model_id,
        "num_tokens": num_tokens,
        "num_blocks": len(keys),
        "nodes": rows,
    }
    if args.json:
        print(json.dumps(result))
    else:
        render.lookup(console, result)


async def _pin(args: argparse.Namespace, console: Console) -> None:
    async with _clients(args) as clients:
        namespace, keys, _ = await _prompt_keys(args, clients[0])
        counts = []
        for client in clients:
            if args.verb == "pin":
                counts.append(await client.pin(namespace.id, keys, args.ttl))
            else:
                counts.append(await client.unpin(namespace.id, keys))
    result = {"verb": args.verb, "blocks": sum(counts), "of": len(keys)}
    print(
        json.dumps(result) if args.json else f"{args.verb}ned {sum(counts)} of {len(keys)} blocks"
    )


async def _evict(args: argparse.Namespace, console: Console) -> None:
    tier = TierKind(args.tier) if getattr(args, "tier", None) else None
    async with _clients(args) as clients:
        moved = 0
        for client in clients:
            if args.verb == "evict":
                assert tier is not None
                moved += await client.evict(tier, args.blocks)
            else:
                moved += await client.flush(tier)
    print(json.dumps({"blocks": moved}) if args.json else f"{moved} blocks moved out")


async def _remove_namespace(args: argparse.Namespace, console: Console) -> None:
    if args.model_id is None and args.namespace_id is None:
        raise InvalidArgument("remove-namespace: give --model-id or --namespace-id")
    async with _clients(args) as clients:
        ns_id = _pick_namespace(await clients[0].stats(), args.model_id, args.namespace_id).id
        removed, num_blocks = 0, 0
        for client in clients:  # on a cluster, every node that has it
            try:
                num_blocks += await client.remove_namespace(ns_id)
                removed += 1
            except NotFound:
                continue
    result = {"namespace_id": ns_id.hex(), "nodes": removed, "blocks": num_blocks}
    print(
        json.dumps(result)
        if args.json
        else f"removed namespace {ns_id.hex()} from {removed} node(s), {num_blocks} blocks"
    )


async def _top(args: argparse.Namespace, console: Console) -> None:
    async with _clients(args) as clients:

        async def sample() -> list[dict[str, Any]]:
            return [stats_summary(await c.stats()) for c in clients]

        await render.top(console, sample, args.interval, args.count)


async def _prompt_keys(
    args: argparse.Namespace, client: StoreClient
) -> tuple[Namespace, list[BlockKey], int]:
    tokens = _read_tokens(args)
    namespace = _pick_namespace(await client.stats(), args.model_id, args.namespace_id)
    await client.register_namespace(namespace)
    return namespace, prefix_keys(namespace.id, tokens, namespace.block_tokens), len(tokens)


def _read_tokens(args: argparse.Namespace) -> list[int]:
    if args.text is not None:
        return list(args.text.encode("utf-8"))
    try:
        raw = args.tokens.read_text()
    except OSError as exc:
        raise InvalidArgument(f"--tokens: cannot read {args.tokens}: {exc.strerror}") from exc
    try:
        values = (
            json.loads(raw) if raw.lstrip().startswith("[") else re.split(r"[\s,]+", raw.strip())
        )
        return [int(v) for v in values if v != ""]
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"--tokens: {args.tokens} is not a list of integers") from exc


def _pick_namespace(stats: Any, model_id: str | None, namespace_id: str | None) -> Namespace:
    from kvstore import codec

    known = [
        codec.namespace_from_pb(ns.namespace) for ns in stats.namespaces if ns.namespace.model_id
    ]
    matches = [
        ns
        for ns in known
        if (model_id is None or ns.model_id == model_id)
        and (namespace_id is None or ns.id.hex() == namespace_id.lower())
    ]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(f"{ns.model_id} ({ns.id.hex()})" for ns in known) or "none registered"
    what = "no namespace matches" if not matches else "several namespaces match"
    raise InvalidArgument(f"{what}; pick one with --model-id or --namespace-id: {names}")


_VERBS = {
    "stats": _stats,
    "nodes": _nodes,
    "topology": _topology,
    "config": _config,
    "lookup": _lookup,
    "pin": _pin,
    "unpin": _pin,
    "evict": _evict,
    "flush": _evict,
    "top": _top,
    "remove-namespace": _remove_namespace,
}
