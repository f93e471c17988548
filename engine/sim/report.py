"""Presenting simulations: a table, a JSON document, and latency-vs-rate plots.

The JSON document is ``{"config": {...}, "runs": {label: figures}, "sweeps": {label:
[{"rate_rps": ..., figures}, ...]}, "capacity": {label: figures}}``; every figure's name
carries its unit (``_ms``, ``_rps``, ``_s``) or is a share in [0, 1].
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table


def table(title: str, rows: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> Table:
    """One column per run label, one row per figure in ``keys``."""
    out = Table(title=title, show_header=True, header_style="bold")
    out.add_column("figure")
    for label in rows:
        out.add_column(label, justify="right")
    for key in keys:
        out.add_row(key, *(_fmt(figures.get(key)) for figures in rows.values()))
    return out


def rows_table(title: str, rows: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> Table:
    """One row per label, one column per figure in ``keys`` (for many labels)."""
    out = Table(title=title, show_header=True, header_style="bold")
    out.add_column("configuration")
    for key in keys:
        out.add_column(key, justify="right")
    for label, figures in rows.items():
        out.add_row(label, *(_fmt(figures.get(key)) for key in keys))
    return out


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def plot_sweeps(
    sweeps: Mapping[str, Sequence[Mapping[str, float]]],
    path: Path,
    title: str,
    *,
    ttft_slo_s: float | None = None,
    tbt_slo_s: float | None = None,
) -> None:
    """TTFT p90 and TBT p90 against the arrival rate, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for (label, points), colour in zip(sweeps.items(), range(len(sweeps)), strict=True):
        rates = [p["rate_rps"] for p in points]
        for ax, key in zip(axes, ("ttft_p90_ms", "tbt_p90_ms"), strict=True):
            ax.plot(rates, [p[key] for p in points], marker="o", color=f"C{colour}", label=label)
    for ax, key, slo in zip(axes, ("TTFT p90", "TBT p90"), (ttft_slo_s, tbt_slo_s), strict=True):
        if slo is not None:
            ax.axhline(slo * 1e3, color="grey", linestyle=":", label=f"SLO {slo * 1e3:g} ms")
        ax.set_yscale("log")
        ax.set_xlabel("arrival rate (requests/s)")
        ax.set_ylabel(f"{key} (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
