"""Rich tables for ``kvstore admin`` (the data comes from ``summary``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table


def stats(console: Console, s: dict[str, Any]) -> None:
    title = f"node {s['node_id']}" + (
        "  [red](degraded: metadata unreachable)" if s["degraded"] else ""
    )
    head = Table(title=title, caption=f"counting since {_since(s['since_s'])}", header_style="bold")
    for column in (
        "hit rate",
        "hit blocks",
        "of which from peers",
        "miss blocks",
        "tokens saved",
        "blocks put",
        "pinned blocks",
    ):
        head.add_column(column, justify="right")
    head.add_row(
        f"{s['hit_rate']:.1%}",
        f"{s['hit_blocks']:,}",
        f"{s['peer_hit_blocks']:,}",
        f"{s['miss_blocks']:,}",
        f"{s['tokens_saved']:,}",
        f"{s['put_blocks']:,}",
        f"{s['pinned_blocks']:,}",
    )
    console.print(head)
    console.print(_tiers_table(s))
    if s["namespaces"]:
        console.print(_namespaces_table(s))
    moves = [f"demoted {m['source']}->{m['target']}: {m['blocks']:,}" for m in s["demotions"]]
    moves += [f"promoted {m['source']}->{m['target']}: {m['blocks']:,}" for m in s["promotions"]]
    console.print("  ".join(moves) or "no blocks moved between tiers")
    reasons = ", ".join(f"{r} {n:,}" for r, n in s["miss_reasons"].items()) or "none"
    console.print(f"miss reasons (blocks): {reasons}")


def _tiers_table(s: dict[str, Any]) -> Table:
    table = Table(title="tiers", header_style="bold")
    for column in (
        "tier",
        "hits",
        "used",
        "capacity",
        "use",
        "blocks",
        "demoted",
        "dropped",
        "corrupted",
    ):
        table.add_column(column, justify="right")
    for t in s["tiers"]:
        use = t["used_bytes"] / t["capacity_bytes"] if t["capacity_bytes"] else 0.0
        table.add_row(
            t["tier"],
            f"{t['hit_blocks']:,}",
            mib(t["used_bytes"]),
            mib(t["capacity_bytes"]),
            f"{use:.0%}",
            f"{t['blocks']:,}",
            f"{t['demoted_blocks']:,}",
            f"{t['dropped_blocks']:,}",
            f"{t['corrupted_blocks']:,}",
        )
    return table


def _namespaces_table(s: dict[str, Any]) -> Table:
    table = Table(title="namespaces", header_style="bold")
    for column in (
        "namespace",
        "hit rate",
        "hits by tier",
        "misses by reason",
        "tokens saved",
    ):
        table.add_column(column)
    for ns in s["namespaces"]:
        table.add_row(
            ns["namespace"],
            f"{ns['hit_rate']:.1%}",
            _pairs(ns["hit_blocks"]),  # by source: each tier, and peer
            _pairs(ns["miss_blocks"]),
            f"{ns['tokens_saved']:,}",
        )
    return table


def cluster_totals(console: Console, c: dict[str, Any]) -> None:
    for node in c["unreachable"]:
        console.print(f"[red]node {node['node_id']} unreachable: {node['error']}")
    console.print(
        f"[bold]cluster[/bold]: {len(c['nodes'])} nodes answered, hit rate {c['hit_rate']:.1%},"
        f" {c['hit_blocks']:,} hit / {c['miss_blocks']:,} missed blocks (each block once),"
        f" {c['tokens_saved']:,} tokens saved"
    )


def _since(since_s: float) -> str:
    if not since_s:
        return "start"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since_s))


def nodes(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table(title="live nodes", header_style="bold")
    for column in ("node", "address", "host", "tiers (used / capacity)", "heartbeat", "state"):
        table.add_column(column)
    for n in rows:
        tiers = "  ".join(
            f"{t['tier']} {mib(t['used_bytes'])} / {mib(t['capacity_bytes'])}" for t in n["tiers"]
        )
        state = (
            "[red]unreachable" if not n["reachable"] else "[red]degraded" if n["degraded"] else "ok"
        )
        table.add_row(
            n["node_id"],
            n["address"],
            n["host_id"],
            tiers,
            f"{n['heartbeat_age_s']:.1f} s ago",
            state,
        )
    console.print(table)


def topology(console: Console, data: dict[str, list[str]], links: list[dict[str, Any]]) -> None:
    planes = Table(title="data planes", header_style="bold")
    planes.add_column("node")
    planes.add_column("addresses (one per NIC)")
    for node_id, addresses in sorted(data.items()):
        planes.add_row(node_id, ", ".join(addresses) or "(none)")
    console.print(planes)
    table = Table(title="links (measured by the source node)", header_style="bold")
    for column in ("from", "to", "transport", "address", "GB/s", "round trip"):
        table.add_column(column)
    for link in links:
        table.add_row(
            link["node_id"],
            link["peer_id"],
            link["transport"],
            link["address"],
            f"{link['gbps']:.2f}",
            f"{link['rtt_us']:.0f} µs",
        )
    console.print(table if links else "no links measured yet (a single node, or probes pending)")


def lookup(console: Console, result: dict[str, Any]) -> None:
    console.print(
        f"{result['num_tokens']:,} tokens, {result['num_blocks']:,} full blocks of model"
        f" {result['model_id']}"
    )
    if not result["nodes"]:
        console.print("no node holds any leading block of this prompt")
        return
    table = Table(header_style="bold")
    for column in ("node", "address", "cached blocks", "cached tokens", "tiers"):
        table.add_column(column)
    for n in result["nodes"]:
        table.add_row(
            n["node_id"], n["address"], f"{n['blocks']:,}", f"{n['tokens']:,}", _pairs(n["tiers"])
        )
    console.print(table)


def pins(console: Console, rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("no pinned blocks")
        return
    table = Table(title="pinned prompts", header_style="bold")
    for column in ("node", "namespace", "first block", "blocks", "tiers", "time left"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["address"],
            row["namespace"],
            row["first_key"][:12],
            f"{row['blocks']:,}",
            _pairs(row["tiers"]),
            f"{row['ttl_s']:,.0f} s",
        )
    console.print(table)


async def top(
    console: Console,
    sample: Callable[[], Awaitable[list[dict[str, Any]]]],
    interval_s: float,
    count: int,
) -> None:
    """Refresh a per-node view with rates over the last interval until interrupted."""
    previous = {s["node_id"]: s for s in await sample()}
    with Live(console=console, auto_refresh=False) as live:
        refreshes = 0
        while count == 0 or refreshes < count:
            await asyncio.sleep(interval_s)
            current = {s["node_id"]: s for s in await sample()}
            live.update(_top_view(previous, current, interval_s), refresh=True)
            previous, refreshes = current, refreshes + 1


def _top_view(previous: dict[str, Any], current: dict[str, Any], interval_s: float) -> Group:
    table = Table(title="strata top", header_style="bold")
    for column in ("node", "hit rate (interval)", "hits/s", "misses/s", "puts/s", "tiers used"):
        table.add_column(column, justify="right")
    for node_id, now in sorted(current.items()):
        before = previous.get(node_id, now)
        hits = now["hit_blocks"] - before["hit_blocks"]
        misses = now["miss_blocks"] - before["miss_blocks"]
        puts = now["put_blocks"] - before["put_blocks"]
        rate = hits / (hits + misses) if hits + misses else 0.0
        tiers = "  ".join(
            f"{t['tier']} {t['used_bytes'] / t['capacity_bytes']:.0%}"
            for t in now["tiers"]
            if t["capacity_bytes"]
        )
        table.add_row(
            node_id,
            f"{rate:.1%}",
            f"{hits / interval_s:,.0f}",
            f"{misses / interval_s:,.0f}",
            f"{puts / interval_s:,.0f}",
            tiers,
        )
    return Group(table)


def mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def _pairs(values: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in values.items()) or "-"
