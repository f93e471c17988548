"""``kvstore admin``: statistics, nodes, lookups, pins and eviction, as tables or JSON.

    kvstore admin [global flags] VERB [verb flags] [global flags]
    global flags: --address HOST:PORT | --cluster REDIS_URL, --token T, --tls-ca PEM,
                  --timeout S, --json  (accepted before or after the verb)
    verbs: stats [--reset] | nodes | topology | config | lookup | pin | unpin | evict
           | flush | top | remove-namespace

Against one node (``--address``, default 127.0.0.1:7600, or $STRATA_ADDRESS) or every
registered node of a cluster (``--cluster``, the metadata Redis URL). With ``--cluster``
a node that does not answer is reported as unreachable and the others are shown (a dead
node stays registered until its TTL). ``lookup``, ``pin`` and ``unpin`` take a prompt
as ``--text`` (tokenized byte by byte, like the tiny model) or as a file of token ids
(``--tokens``: whitespace- or comma-separated integers, or JSON). Flag values are
checked here, and an error names the flag; no user input ends in a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console

from kvstore.admin import render
from kvstore.admin.summary import cluster_summary, node_summary, pin_rows, stats_summary
from kvstore.admin.tokenize import tokenize
from kvstore.client.calls import CallOptions
from kvstore.client.store_client import StoreClient
from kvstore.errors import InvalidArgument, KVStoreError, NotFound
from kvstore.hashing import prefix_keys
from kvstore.metadata.base import NodeInfo
from kvstore.metadata.redis import RedisMetadata
from kvstore.types import BlockKey, NamespaceId, TierKind


def _global_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The flags every verb takes, before or after it. After the verb they default to
    SUPPRESS, so a flag given before the verb is not overwritten by the verb's default."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--address",
        default=default(os.environ.get("STRATA_ADDRESS", "127.0.0.1:7600")),
        help="HOST:PORT of a node (default $STRATA_ADDRESS or 127.0.0.1:7600)",
    )
    parser.add_argument(
        "--cluster", metavar="REDIS_URL", default=default(None), help="every live node of a cluster"
    )
    parser.add_argument(
        "--token", default=default(os.environ.get("STRATA_TOKEN", "")), help="bearer token"
    )
    parser.add_argument(
        "--tls-ca", type=Path, default=default(None), help="CA certificate (PEM); enables TLS"
    )
    parser.add_argument(
        "--timeout", type=_positive_float("--timeout"), default=default(5.0), help="seconds a call"
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )


def add_admin_parser(commands: Any) -> None:
    admin = commands.add_parser("admin", help="inspect and steer a node or a cluster")
    _global_flags(admin, defaults=True)
    verbs = admin.add_subparsers(dest="verb", required=True)

    def verb_parser(name: str, text: str) -> argparse.ArgumentParser:
        verb: argparse.ArgumentParser = verbs.add_parser(name, help=text)
        _global_flags(verb, defaults=False)
        return verb

    stats = verb_parser("stats", "hit rates by source, tokens saved, tiers, moves, pins")
    stats.add_argument("--reset", action="store_true", help="zero the counters (admin token)")
    verb_parser("nodes", "registered nodes, their tiers and heartbeats")
    verb_parser("pins", "pinned prompts: namespace, blocks, tiers, time left")
    verb_parser("topology", "how each node reaches the others: transport, path, speed")
    verb_parser("config", "a node's effective configuration")
    for name, text in (
        ("lookup", "how long a prompt's prefix is cached, where"),
        ("pin", "keep a prompt's cached prefix resident"),
        ("unpin", "release a pin"),
    ):
        verb = verb_parser(name, text)
        source = verb.add_mutually_exclusive_group(required=True)
        source.add_argument(
            "--text", help="prompt text (with --router: the model's tokenizer; else bytes)"
        )
        source.add_argument(
            "--messages",
            type=Path,
            help="file of OpenAI chat messages (JSON); needs --router (the chat template)",
        )
        source.add_argument("--tokens", type=Path, help="file of token ids")
        verb.add_argument(
            "--router",
            default=os.environ.get("STRATA_ROUTER") or None,
            metavar="URL",
            help="the endpoint whose /tokenize gives the model's tokens (default $STRATA_ROUTER)",
        )
        verb.add_argument(
            "--api-key", default=os.environ.get("STRATA_API_KEY", ""), help="the router's key"
        )
        verb.add_argument("--model-id", help="namespace by model id (if one matches)")
        verb.add_argument("--namespace-id", help="namespace by id (hex)")
        if name == "pin":
            verb.add_argument(
                "--ttl", type=_positive_float("--ttl"), help="seconds (default: server's)"
            )
    evict = verb_parser("evict", "push blocks out of a tier")
    evict.add_argument("--tier", choices=[t.value for t in TierKind], required=True)
    evict.add_argument("--blocks", type=_positive_int("--blocks"), required=True)
    flush = verb_parser("flush", "push every evictable block out (of one tier)")
    flush.add_argument("--tier", choices=[t.value for t in TierKind])
    remove = verb_parser("remove-namespace", "drop a namespace and all its blocks")
    remove.add_argument("--model-id", help="namespace by model id (if one matches)")
    remove.add_argument("--namespace-id", help="namespace by id (hex)")
    top = verb_parser("top", "a live view, refreshed every --interval seconds")
    top.add_argument("--interval", type=_positive_float("--interval"), default=1.0)
    top.add_argument(
        "--count", type=_count("--count"), default=0, help="stop after N refreshes (0: never)"
    )
    admin.set_defaults(run=run_admin)


def _positive_int(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{flag} must be positive, got {value}")
        return value

    return parse


def _count(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        return 0 if text.strip() == "0" else _positive_int(flag)(text)

    return parse


def _positive_float(flag: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a number, got {text!r}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{flag} must be positive, got {text}")
        return value

    return parse


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
        addresses = [node.address for node in await _registered(args)]
        if not addresses:
            raise NotFound(f"no live node registered in {args.cluster}")
    clients = [StoreClient(address, options) for address in addresses]
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()


async def _registered(args: argparse.Namespace) -> list[NodeInfo]:
    """The nodes the cluster's registry lists (a node that died lingers until its TTL)."""
    metadata = RedisMetadata(args.cluster, timeout_s=args.timeout)
    try:
        return await metadata.nodes()
    finally:
        await metadata.close()


class _Answers(NamedTuple):
    summaries: list[dict[str, Any]]  # the nodes that answered
    unreachable: list[dict[str, str]]  # node_id (address with --address), address, error


async def _gather_stats(clients: list[StoreClient], *, reset: bool) -> _Answers:
    """Every node's statistics, concurrently; a node that fails is reported, not fatal
    (unless it is the only one asked)."""

    async def one(client: StoreClient) -> dict[str, Any]:
        return stats_summary(await (client.reset_stats() if reset else client.stats()))

    results = await asyncio.gather(*(one(c) for c in clients), return_exceptions=True)
    answers = _Answers([], [])
    for client, result in zip(clients, results, strict=True):
        if isinstance(result, KVStoreError):
            if len(clients) == 1:
                raise result
            answers.unreachable.append(
                {"node_id": client.address, "address": client.address, "error": str(result)}
            )
        elif isinstance(result, BaseException):
            raise result
        else:
            answers.summaries.append(result)
    return answers


async def _stats(args: argparse.Namespace, console: Console) -> None:
    async with _clients(args) as clients:
        answers = await _gather_stats(clients, reset=args.reset)
    summaries = answers.summaries
    cluster = cluster_summary(summaries, answers.unreachable)
    if args.json:
        print(json.dumps(summaries[0] if not args.cluster else cluster))
        return
    for summary in summaries:
        render.stats(console, summary)
    if args.cluster:
        render.cluster_totals(console, cluster)
    if args.reset:
        console.print(f"counters of {len(summaries)} node(s) reset; the figures above were final")


async def _nodes(args: argparse.Namespace, console: Console) -> None:
    if args.cluster:  # from the registry, so that no single node has to answer
        nodes = await _registered(args)
        async with _clients(args) as clients:
            answers = await _gather_stats(clients, reset=False)
        answered = {s["node_id"] for s in answers.summaries}
    else:
        async with _clients(args) as clients:
            nodes = await clients[0].nodes()
        answered = {n.node_id for n in nodes}
    now = time.time()
    rows = [{**node_summary(n, now), "reachable": n.node_id in answered} for n in nodes]
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
        namespace, keys, num_tokens = await _prompt_keys(args, clients[0])
        counts = []
        for client in clients:
            if args.verb == "pin":
                counts.append(await client.pin(namespace.id, keys, args.ttl))
            else:
                counts.append(await client.unpin(namespace.id, keys))
    done = max(counts, default=0)  # a whole prompt lives on one node (placement)
    result = {"verb": args.verb, "blocks": sum(counts), "of": len(keys)}
    print(
        json.dumps(result) if args.json else f"{args.verb}ned {sum(counts)} of {len(keys)} blocks"
    )
    if (args.verb == "pin" and done < len(keys)) or not keys:
        raise InvalidArgument(_short_pin(done, len(keys), num_tokens, namespace.block_tokens))


def _short_pin(done: int, wanted: int, num_tokens: int, block_tokens: int) -> str:
    if not wanted:
        return (
            f"the prompt has {num_tokens} tokens, fewer than one block of {block_tokens}:"
            " nothing to pin"
        )
    return (
        f"pinned {done} of {wanted} blocks: the other {wanted - done} are not cached"
        " (run the prompt once, then pin; `lookup` shows what is cached)"
    )


async def _pins(args: argparse.Namespace, console: Console) -> None:
    async with _clients(args) as clients:
        rows = []
        for client in clients:
            rows += [{"address": client.address, **row} for row in pin_rows(await client.pins())]
    if args.json:
        print(json.dumps(rows))
    else:
        render.pins(console, rows)


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
            return (await _gather_stats(clients, reset=False)).summaries

        if args.json:  # one JSON line per refresh: every node's statistics
            refreshes = 0
            while args.count == 0 or refreshes < args.count:
                print(json.dumps({"time_s": time.time(), "nodes": await sample()}), flush=True)
                refreshes += 1
                if args.count == 0 or refreshes < args.count:
                    await asyncio.sleep(args.interval)
            return
        await render.top(console, sample, args.interval, args.count)


class _Picked(NamedTuple):
    """A namespace as Stats reports it: by id (its salt never leaves the node)."""

    id: NamespaceId
    model_id: str
    block_tokens: int


async def _prompt_keys(
    args: argparse.Namespace, client: StoreClient
) -> tuple[_Picked, list[BlockKey], int]:
    model_id = args.model_id
    if args.router:
        reply = await asyncio.to_thread(tokenize, args.router, args.api_key, _tokenize_body(args))
        tokens, model_id = reply.tokens, model_id or reply.model_id
    elif args.messages is not None:
        raise InvalidArgument(
            "--messages: needs --router URL (or $STRATA_ROUTER): the chat template and"
            " tokenizer live with the model"
        )
    else:
        tokens = _read_tokens(args)
    namespace = _pick_namespace(await client.stats(), model_id, args.namespace_id)
    return namespace, prefix_keys(namespace.id, tokens, namespace.block_tokens), len(tokens)


def _tokenize_body(args: argparse.Namespace) -> dict[str, Any]:
    if args.tokens is not None:
        raise InvalidArgument("--router: tokenizes --text or --messages, not --tokens")
    if args.text is not None:
        return {"prompt": args.text}
    try:
        messages = json.loads(args.messages.read_text())
    except OSError as exc:
        raise InvalidArgument(f"--messages: cannot read {args.messages}: {exc.strerror}") from None
    except ValueError as exc:
        raise InvalidArgument(f"--messages: {args.messages} is not JSON: {exc}") from None
    if isinstance(messages, dict):  # a whole request body: take its messages
        messages = messages.get("messages")
    if not isinstance(messages, list):
        raise InvalidArgument(f"--messages: {args.messages} holds no list of messages")
    return {"messages": messages}


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


def _pick_namespace(stats: Any, model_id: str | None, namespace_id: str | None) -> _Picked:
    known = [
        _Picked(NamespaceId(ns.namespace_id), ns.namespace.model_id, ns.namespace.block_tokens)
        for ns in stats.namespaces
        if ns.namespace.model_id
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
    "pins": _pins,
    "evict": _evict,
    "flush": _evict,
    "top": _top,
    "remove-namespace": _remove_namespace,
}
