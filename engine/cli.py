"""``kvengine``: the engine's command line.

kvengine keys TEXT [--block-tokens N] [layout flags] [--json]
    the store's block keys for TEXT under a namespace (byte-level tokens)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from engine.tokenizer import ByteTokenizer
from kvstore.errors import KVStoreError
from kvstore.hashing import Namespace, prefix_keys
from kvstore.layout import BlockSpec, KVDtype


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvengine", description="Strata engine")
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="block keys of a text, as the store names them")
    keys.add_argument("text", help="prompt text (tokenized byte by byte)")
    keys.add_argument("--model-id", default="strata-tiny")
    keys.add_argument("--salt", default="", help="tenant salt")
    keys.add_argument("--block-tokens", type=int, default=16)
    keys.add_argument("--layers", type=int, default=4)
    keys.add_argument("--kv-heads", type=int, default=2)
    keys.add_argument("--head-dim", type=int, default=32)
    keys.add_argument("--dtype", choices=[d.value for d in KVDtype], default="float32")
    keys.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        return _keys(args)
    except KVStoreError as exc:
        print(f"kvengine: {exc}", file=sys.stderr)
        return 2


def _keys(args: argparse.Namespace) -> int:
    spec = BlockSpec(
        args.layers, args.kv_heads, args.head_dim, KVDtype(args.dtype), args.block_tokens
    )
    namespace = Namespace(args.model_id, spec, args.salt)
    tokens = ByteTokenizer().encode(args.text)
    keys = prefix_keys(namespace.id, tokens, spec.block_tokens)
    rows = [
        {
            "block": i,
            "tokens": f"{i * spec.block_tokens}-{(i + 1) * spec.block_tokens}",
            "key": k.hex(),
        }
        for i, k in enumerate(keys)
    ]
    if args.json:
        print(
            json.dumps(
                {"namespace_id": namespace.id.hex(), "num_tokens": len(tokens), "blocks": rows}
            )
        )
        return 0
    table = Table(title=f"namespace {namespace.id.hex()}", header_style="bold")
    for column in ("block", "tokens", "key"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["block"]), str(row["tokens"]), str(row["key"]))
    console = Console()
    console.print(table)
    unkeyed = len(tokens) - len(keys) * spec.block_tokens
    console.print(
        f"{len(tokens)} tokens, {len(keys)} full blocks; {unkeyed} trailing tokens are not keyed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
