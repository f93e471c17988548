"""``kvengine``: the engine's command line.

kvengine up [--model PATH] [--port N]     the whole stack on one machine: a store node,
                                          a prefill and a decode worker, the router and
                                          the OpenAI-compatible endpoint (8000)
kvengine chat [--url URL]                 a terminal chat with the endpoint
kvengine router [config flags]            the router and endpoint alone (a cluster role; in
                                          front of vLLM OpenAI servers with router.vllm)
kvengine generate TEXT [sampling flags] [--decode HOST:PORT] [--chat] [--json]
    generate from TEXT: in this process (the tiny model unless --engine.model PATH),
    or on a running decode worker
kvengine prefill [config flags]      a prefill worker (gRPC 7610)
kvengine decode [config flags]       a decode worker (gRPC 7620, data plane 7621)
kvengine simulate --trace PATH [--cluster TOML] [--sweep L:H:N] [--plan] [--json PATH]
    a discrete-event simulation of a cluster on a trace (engine/sim); --plan sizes one
kvengine keys TEXT [layout flags] [--json]
    the store's block keys for TEXT under a namespace (byte-level tokens)

Config flags are the ``[engine]``, ``[prefill]`` and ``[decode]`` keys of the config file
(``--engine.model PATH``, ``--decode.prefill HOST:PORT``, ...; see ``engine.config``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from engine.config import add_engine_flags, engine_config_from_args, load_engine_config
from engine.errors import EngineError
from engine.model.tiny import MODEL_ID as TINY_MODEL_ID
from engine.roles import WorkerRole
from engine.sampling import SamplingParams
from engine.sim.command import add_parser as add_simulate_parser
from engine.tokenizer import ByteTokenizer
from engine.workers.requests import InvalidRequest
from kvstore.errors import KVStoreError
from kvstore.hashing import Namespace, prefix_keys
from kvstore.layout import BlockSpec, KVDtype


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvengine", description="Strata engine")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="generate text from a prompt")
    generate.add_argument("prompt", help="prompt text")
    generate.add_argument("--decode", default="", help="a decode worker's HOST:PORT")
    generate.add_argument("--chat", action="store_true", help="wrap as a user chat turn")
    generate.add_argument("--max-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=0)
    generate.add_argument("--seed", type=int, default=None)
    generate.add_argument("--stop", action="append", default=[], help="stop string")
    generate.add_argument("--json", action="store_true", help="machine-readable output")
    add_engine_flags(generate)

    up = commands.add_parser("up", help="run the whole stack on this machine")
    up.add_argument("--model", default=None, help="a checkpoint folder (default: tiny)")
    up.add_argument("--port", type=int, default=None, help="HTTP port (default 8000)")
    up.add_argument("--store-port", type=int, default=7600, help="store node (0: free ports)")
    add_engine_flags(up)

    chat = commands.add_parser("chat", help="chat with the endpoint in the terminal")
    chat.add_argument("--url", default="http://127.0.0.1:8000")
    chat.add_argument("--model", default="", help="default: the one the server lists")
    chat.add_argument("--api-key", default="")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--system", default="", help="a system prompt")

    router = commands.add_parser("router", help="run the router and HTTP endpoint")
    router.add_argument("--log-level", default="INFO")
    add_engine_flags(router)

    for role, text in (
        (WorkerRole.PREFILL, "run a prefill worker"),
        (WorkerRole.DECODE, "run a decode worker"),
    ):
        worker = commands.add_parser(role, help=text)
        worker.add_argument("--log-level", default="INFO")
        add_engine_flags(worker)

    add_simulate_parser(commands)

    keys = commands.add_parser("keys", help="block keys of a text, as the store names them")
    keys.add_argument("text", help="prompt text (tokenized byte by byte)")
    keys.add_argument("--model-id", default=TINY_MODEL_ID)
    keys.add_argument("--salt", default="", help="tenant salt")
    keys.add_argument("--block-tokens", type=int, default=16)
    keys.add_argument("--layers", type=int, default=4)
    keys.add_argument("--kv-heads", type=int, default=2)
    keys.add_argument("--head-dim", type=int, default=32)
    keys.add_argument("--dtype", choices=[d.value for d in KVDtype], default="float32")
    keys.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "keys":
            return _keys(args)
        if args.command == "generate":
            return _generate(args)
        if args.command == "up":
            return _up(args)
        if args.command == "chat":
            from engine.router.chat_client import run_chat

            return run_chat(
                args.url,
                model=args.model,
                api_key=args.api_key,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                system=args.system,
            )
        if args.command == "router":
            return _router(args)
        if args.command == "simulate":
            from engine.sim.command import run as run_simulate

            return run_simulate(args)
        return _serve(args)
    except (KVStoreError, EngineError) as exc:  # ConfigError is a KVStoreError
        print(f"kvengine: {exc}", file=sys.stderr)
        return 2


def _up(args: argparse.Namespace) -> int:
    from engine.router.up import run_up
    from kvstore import config_loader

    overrides = config_loader.flag_overrides(args)
    if args.model:
        overrides["engine.model"] = args.model
    if args.port is not None:
        overrides["router.port"] = str(args.port)
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    config = load_engine_config(args.config, overrides=overrides)
    try:
        return run_up(config, args.config, overrides, store_port=args.store_port)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"kvengine up: {exc}", file=sys.stderr)
        return 1


def _router(args: argparse.Namespace) -> int:
    import uvicorn

    from engine.router.api import create_app
    from engine.router.service import open_router

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    config = engine_config_from_args(args)
    if config.router.vllm_servers:  # in front of vLLM OpenAI servers
        from engine.router.vllm_api import create_vllm_app

        vllm = create_vllm_app(config)
        uvicorn.run(vllm, host=config.router.host, port=config.router.port, log_level="warning")
        return 0
    app = create_app(
        lambda: open_router(config),
        api_keys=config.router.api_keys,
        salt_by_api_key=config.router.salt_by_api_key,
        max_concurrency=config.router.max_concurrency,
        access_log=config.router.access_log,
        log_interval_s=config.router.log_interval_s,
    )
    uvicorn.run(app, host=config.router.host, port=config.router.port, log_level="warning")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from engine.service.serve import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(WorkerRole(args.command), engine_config_from_args(args)))
    return 0


def _generate(args: argparse.Namespace) -> int:
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        seed=args.seed,
        stop=tuple(args.stop),
    )
    config = engine_config_from_args(args)
    start = time.perf_counter()
    result: dict[str, object]
    if args.decode:
        result = asyncio.run(_generate_remote(args, params, config.engine.token))
    else:
        from engine.llm import LLM

        with LLM.from_config(config.engine) as llm:
            if args.chat:
                out = llm.chat([{"role": "user", "content": args.prompt}], params)
            else:
                out = llm.generate(args.prompt, params)[0]
        result = {
            "text": out.text,
            "token_ids": out.token_ids,
            "finish_reason": out.finish_reason,
            "prompt_tokens": len(out.prompt_token_ids),
            "cached_tokens": int(out.metrics.get("cached_tokens", 0)),
        }
    result["seconds"] = round(time.perf_counter() - start, 3)
    if args.json:
        print(json.dumps(result))
    else:
        console = Console()
        console.print(result["text"], markup=False, highlight=False)
        num_tokens = len(result["token_ids"])  # type: ignore[arg-type]
        console.print(
            f"[dim]{num_tokens} tokens ({result['finish_reason']}),"
            f" prompt {result['prompt_tokens']} tokens of which {result['cached_tokens']}"
            f" cached, {result['seconds']} s[/dim]"
        )
    return 0


async def _generate_remote(
    args: argparse.Namespace, params: SamplingParams, token: str
) -> dict[str, object]:
    import grpc

    from engine.service.client import DecodeClient

    if args.chat:
        raise InvalidRequest("--chat needs the model's template: drop --decode or --chat")
    tokens: list[int] = []
    text: list[str] = []
    result: dict[str, object] = {}
    async with DecodeClient(args.decode, token=token) as client:
        try:
            async for chunk in client.generate(args.prompt, params):
                if not tokens and not text:
                    result.update(
                        prompt_tokens=chunk.prompt_tokens, cached_tokens=chunk.cached_tokens
                    )
                tokens.extend(chunk.token_ids)
                text.append(chunk.text)
                if chunk.finish_reason:
                    result["finish_reason"] = chunk.finish_reason
        except grpc.aio.AioRpcError as exc:
            raise InvalidRequest(f"decode worker {args.decode}: {exc.details()}") from None
    return {**result, "text": "".join(text), "token_ids": tokens}


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
