"""Shared plumbing for the benchmarks: flags, result tables, JSON output, progress bars.

Every benchmark prints its configuration with its results, writes the same figures as
JSON with ``--json PATH``, and runs a reduced configuration with ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()


@dataclass(frozen=True, slots=True)
class Target:
    """A figure's goal: ``key >= ratio * of`` (or ``>= value`` when ``of`` is None)."""

    ratio: float
    of: str | None = None

    def met(self, results: dict[str, float], key: str) -> bool:
        goal = self.ratio * (results[self.of] if self.of else 1.0)
        return results[key] >= goal

    def describe(self) -> str:
        return f">= {self.ratio:g} x {self.of}" if self.of else f">= {self.ratio:g}"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="reduced run (well under a minute)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write results here")
    p.add_argument("--seed", type=int, default=0)
    return p


def median_of(fn: Callable[[], float], repeats: int) -> float:
    """Median of ``repeats`` calls of ``fn`` (each returns one measurement)."""
    return statistics.median(fn() for _ in range(repeats))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def report(
    title: str,
    config: dict[str, Any],
    results: dict[str, float],
    *,
    units: dict[str, str] | None = None,
    targets: dict[str, Target] | None = None,
    json_path: Path | None = None,
) -> None:
    """Print the config and a results table; write both to ``json_path`` if given."""
    units, targets = units or {}, targets or {}
    console.print(f"[bold]{title}[/bold]  " + "  ".join(f"{k}={v}" for k, v in config.items()))
    table = Table(show_header=True, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("target")
    for key, value in results.items():
        target = targets.get(key)
        verdict = ""
        if target is not None:
            ok = target.met(results, key)
            verdict = f"{target.describe()} {'[green]met' if ok else '[red]missed'}"
        table.add_row(key, _fmt(value), units.get(key, ""), verdict)
    console.print(table)
    if json_path is not None:
        payload = {
            "benchmark": title,
            "config": config,
            "results": results,
            "targets": {k: t.describe() for k, t in targets.items()},
            "targets_met": {k: t.met(results, k) for k, t in targets.items()},
            "host": {"python": platform.python_version(), "machine": platform.machine()},
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(payload, indent=2, sort_keys=False))
        console.print(f"wrote {json_path}")


def _fmt(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def save_plot(fig: Any, ax: Any, title: str, path: Path) -> None:
    """Title, grid and legend on ``ax``; ``fig`` written to ``path`` as a PNG and closed."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
