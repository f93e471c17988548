"""``kvstore``: the store's command line.

kvstore demo [--requests N] [--data-dir PATH]   a chat workload through DRAM + NVMe
kvstore config [--json] [config flags]          the effective configuration
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kvstore.config import add_config_flags, config_from_args
from kvstore.config_loader import env_name
from kvstore.errors import KVStoreError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result: int = args.run(args)
        return result
    except KVStoreError as exc:
        print(f"kvstore: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvstore", description="Strata KV-cache block store")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one store node until SIGTERM/SIGINT")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    add_config_flags(serve)
    serve.set_defaults(run=_serve)

    from kvstore.admin.cli import add_admin_parser

    add_admin_parser(commands)

    demo = commands.add_parser("demo", help="run a chat workload through DRAM and NVMe tiers")
    demo.add_argument("--requests", type=int, default=1500, help="chat requests to replay")
    demo.add_argument("--data-dir", type=Path, default=None, help="NVMe tier directory (kept)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    config = commands.add_parser("config", help="print the effective configuration")
    config.add_argument("--json", action="store_true", help="machine-readable output")
    add_config_flags(config)
    config.set_defaults(run=_config)
    return parser


def _serve(args: argparse.Namespace) -> int:
    import uvloop

    from kvstore.server.serve import RunningNode, serve

    config = config_from_args(args)
    logging.getLogger().setLevel(args.log_level)
    if config.server.tune_malloc:
        from kvstore.malloc import keep_freed_memory

        keep_freed_memory()

    def ready(running: RunningNode) -> None:
        metrics = f", metrics on :{running.metrics_port}/metrics" if running.metrics_port else ""
        print(
            f"strata node {running.node.node_id} serving on {running.address}{metrics}", flush=True
        )

    uvloop.run(serve(config, ready))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from kvstore.demo import DemoSettings
    from kvstore.demo import main as demo_main

    if args.requests <= 0:
        raise SystemExit("kvstore demo: --requests must be positive")
    return demo_main(DemoSettings(num_requests=args.requests, seed=args.seed), args.data_dir)


def _config(args: argparse.Namespace) -> int:
    values = config_from_args(args).redacted()  # tokens and passwords never printed
    if args.json:
        print(json.dumps(values, indent=2))
        return 0
    table = Table(title="Effective configuration", header_style="bold")
    for column in ("key", "value", "environment variable"):
        table.add_column(column)
    for key, value in _flatten(values):
        table.add_row(key, str(value), env_name(key))
    Console().print(table)
    return 0


def _flatten(values: dict[str, object], prefix: str = "") -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for name, value in values.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{name}."))
        else:
            rows.append((f"{prefix}{name}", value))
    return rows


if __name__ == "__main__":
    sys.exit(main())
