"""Chaos, soak and hostile input: what breaks, what recovers, and whether bytes stay right.

    PYTHONPATH=$PWD .venv/bin/python -m bench.chaos --quick --json bench/results/chaos.json

Faults, each under load (see ``chaos_faults``): kill -9 of a store node and of Redis
(a two-node cluster behind a ``ClusterClient``), a full disk (NVMe on a 64 MiB tmpfs
that is filled, then freed) and a slow disk (NVMe on a loop device throttled to 1 MiB/s
and 50 IOPS), a cut link between two "hosts" (network namespaces joined by veth), and on
one ``kvengine up``: kill -9 of the prefill worker and of the decode worker, and hostile
bytes on every port of every role. Then a soak of one node at 70% of its measured
capacity (30 minutes; ``--quick``: 3 minutes, and shorter fault phases).

Per fault it reports requests ok / retried / recomputed / failed, wrong bytes served
(must be 0), time to detect and to recover, and RSS and fd growth of the processes that
lived through it; a table, JSON, and a PNG of the soak's memory and fds. Needs root for
the tmpfs, the loop device and the namespaces; a fault the sandbox cannot stage is
listed as not run, with the reason. Everything runs on loopback or in namespaces it
creates and removes, and every child process ends with the run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.table import Table

from bench.chaos_env import capabilities
from bench.chaos_faults import (
    FULL,
    QUICK,
    FaultResult,
    Phases,
    engine_faults,
    full_disk,
    link_cut,
    redis_kill,
    skipped,
    slow_disk,
    store_node_kill,
)
from bench.chaos_soak import SoakResult, soak
from bench.common import console, parser, progress, save_plot
from kvstore.errors import KVStoreError

Scenario = Callable[[Phases], Awaitable[FaultResult | list[FaultResult]]]
SCENARIOS: list[tuple[str, Scenario, str | None]] = [
    ("kill -9 store node", store_node_kill, None),
    ("kill -9 Redis", redis_kill, None),
    ("full disk", full_disk, "tmpfs"),
    ("slow disk", slow_disk, "slow_disk"),
    ("cut link", link_cut, "netns"),
    ("engine: kill -9 prefill, decode; hostile frames", engine_faults, None),
]


async def run(
    phases: Phases, soak_s: float, only: set[str]
) -> tuple[list[FaultResult], SoakResult | None, dict[str, str]]:
    allowed = capabilities()
    results: list[FaultResult] = []
    with progress() as bar:
        task = bar.add_task("faults", total=len(SCENARIOS) + 1)
        for name, scenario, needs in SCENARIOS:
            bar.update(task, description=name)
            if only and not any(word in name for word in only):
                bar.advance(task)
                continue
            if needs is not None and allowed[needs] != "yes":
                results.append(skipped(name, allowed[needs]))
            else:
                try:
                    found = await scenario(phases)
                    results.extend(found if isinstance(found, list) else [found])
                except (OSError, RuntimeError, KVStoreError) as exc:
                    results.append(skipped(name, f"{type(exc).__name__}: {exc}"))
            bar.advance(task)
        bar.update(task, description=f"soak {soak_s:.0f} s at 70% of capacity")
        soaked = await soak(soak_s) if soak_s > 0 and (not only or "soak" in only) else None
        bar.advance(task)
    return results, soaked, allowed


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(results: list[FaultResult], soaked: SoakResult | None) -> Table:
    out = Table(show_header=True, header_style="bold")
    for column in ("fault", "ok", "retried", "recomputed", "failed", "wrong", "detect s",
                   "recover s", "p99 ms before/during", "RSS Δ MiB", "fds Δ", "note"):  # fmt: skip
        out.add_column(column, justify="left" if column in ("fault", "note") else "right")
    for r in results:
        out.add_row(r.fault, str(r.ok), str(r.retried), str(r.recomputed), str(r.failed),
                    str(r.wrong), _seconds(r.detect_s), _seconds(r.recover_s),
                    f"{r.p99_before_ms:.0f} / {r.p99_during_ms:.0f}",
                    f"{r.rss_growth_mib:+.1f}", f"{r.fd_growth:+d}", r.note)  # fmt: skip
    if soaked is not None:
        c = soaked.counts
        note = (
            f"{soaked.rate_ops_s:.0f} ops/s of {soaked.capacity_ops_s:.0f} measured;"
            f" p50 {soaked.p50_ms:.1f} ms"
        )
        length = (
            f"{soaked.duration_s / 60:.0f} min"
            if soaked.duration_s >= 120
            else f"{soaked.duration_s:.0f} s"
        )
        out.add_row(f"soak {length}", str(c["ok"]), str(c["retried"]),
                    str(c["recomputed"]), str(c["failed"]), str(soaked.wrong), "-", "-",
                    f"- / {soaked.p99_ms:.0f}", f"{soaked.rss_growth_mib:+.1f}",
                    f"{soaked.fd_growth:+d}", note)  # fmt: skip
    return out


def plot(soaked: SoakResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    seconds = [s for s, _, _ in soaked.samples]
    ax.plot(seconds, [m for _, m, _ in soaked.samples], label="node RSS (MiB)")
    ax.plot(seconds, [f for _, _, f in soaked.samples], label="node open fds")
    ax.set_xlabel("seconds into the soak")
    save_plot(fig, ax, f"soak at {soaked.rate_ops_s:.0f} ops/s (70% of capacity)", path)


def main() -> None:
    p: argparse.ArgumentParser = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--soak-s", type=float, default=None, help="soak length (default 1800; --quick 180)"
    )
    p.add_argument(
        "--only", nargs="*", default=[], help="run faults whose name has one of these words"
    )
    p.add_argument("--png", type=Path, default=None, help="write the soak's plot here")
    args = p.parse_args()
    # the client's fall-back notices (data plane -> gRPC) would drown the progress bar
    logging.getLogger("kvstore.client").setLevel(logging.ERROR)
    phases = QUICK if args.quick else FULL
    soak_s = args.soak_s if args.soak_s is not None else (180.0 if args.quick else 1800.0)
    started = time.time()
    results, soaked, allowed = asyncio.run(run(phases, soak_s, set(args.only)))
    config = {"quick": args.quick, "phases_s": dataclasses.asdict(phases), "soak_s": soak_s,
              "soak_fraction": 0.7, "seed": args.seed}  # fmt: skip
    console.print("[bold]chaos[/bold]  " + "  ".join(f"{k}={v}" for k, v in config.items()))
    console.print(table(results, soaked))
    wrong = sum(r.wrong for r in results) + (soaked.wrong if soaked else 0)
    console.print(f"wrong bytes served: {wrong} (must be 0)")
    if args.json is not None:
        payload = {
            "benchmark": "chaos",
            "config": config,
            "capabilities": allowed,
            "faults": [dataclasses.asdict(r) for r in results],
            "soak": dataclasses.asdict(soaked) if soaked else None,
            "wrong_total": wrong,
            "wall_s": time.time() - started,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {args.json}")
    if soaked is not None and soaked.samples and args.png is not None:
        plot(soaked, args.png)
        console.print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
