"""``kvengine up``: the whole stack on one machine, in one command.

Starts, as child processes, a store node (embedded metadata; 7600-7602), a prefill worker
using it (7610) and a decode worker (7620, data plane 7621); then runs the router and the
HTTP endpoint in this process (``router.port``, 8000). The store node is the prefix cache
(the prefill worker keeps no cache of its own unless ``--engine.prefix_caching true``), so
``kvstore admin stats`` shows every reuse. Checks that every port it needs is free
before starting anything (an error names the key and the port); a child that fails to
start is reported with its own last words. Prints the URL, an example request and the
``STRATA_ADDRESS`` to give ``kvstore admin`` once everything answers. Ctrl-C (or
SIGTERM) stops the endpoint, then the children (SIGTERM, then SIGKILL after a grace
period); children also die with this process if it is killed outright.

While it runs, a ``Supervisor`` restarts any child that dies (with back-off, on the
ports it had), and the endpoint answers 503 while a role has no healthy worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from signal import SIGINT, SIGTERM
from typing import NamedTuple

import uvicorn
from rich.console import Console

from engine.config import EngineConfig
from engine.launch import Child
from engine.model.loader import TINY_MODEL_PATH, load_tokenizer
from engine.router.api import create_app
from engine.router.service import RouterService, open_router, served_model_name
from engine.router.supervisor import Process, Supervisor
from kvstore.config import DEFAULT_PAGE_BYTES
from kvstore.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Recipe:
    """How to start one of the stack's children: it is up once it prints ``ready``."""

    name: str
    args: tuple[str, ...]
    ready: str
    timeout_s: float

    def start(self, cancel: threading.Event | None = None) -> Started:
        """Start it and wait until it is up; its later output goes on to stderr.

        Raises:
            RuntimeError: it did not come up (the child is stopped; its last words say why).
        """
        child = Child(self.name, self.args)
        line = child.wait_for_line(self.ready, self.timeout_s, cancel)
        child.pass_on(lambda text: sys.stderr.write(f"[{self.name}] {text}"))
        return Started(self, child, line)

    def restarter(self, sticky: Sequence[str]) -> Callable[[threading.Event], Child]:
        """How to start this child again: same arguments, then ``sticky`` (its ports)."""
        again = dataclasses.replace(self, args=(*self.args, *sticky))
        return lambda cancel: again.start(cancel).child


class Started(NamedTuple):
    recipe: Recipe
    child: Child
    line: str  # the line that said it is up


def run_up(
    config: EngineConfig,
    config_file: Path | None,
    overrides: dict[str, str],
    *,
    store_port: int = 7600,
) -> int:
    """Run the stack until SIGINT or SIGTERM. ``store_port`` 0 puts the store node (and
    its metrics and data plane) on free ports."""
    console = Console()
    children: list[Child] = []
    supervisor = Supervisor()
    python = sys.executable
    if not config.engine.namespace_salt:  # one secret salt for this run's processes,
        os.environ["STRATA_ENGINE__SALT"] = secrets.token_hex(16)  # inherited, not on argv
    common = [f"--config={config_file}"] if config_file else []
    # the store node is the cache here (so `kvstore admin stats` shows every reuse),
    # unless asked for a first-level cache in the prefill worker too
    engine_flags = ["--engine.prefix_caching=false"] + [
        f"--{k}={v}" for k, v in overrides.items() if k.startswith("engine.")
    ]
    check_ports(config, store_port)  # before any child starts
    try:
        store_flags = _store_flags(config, store_port)
        console.print("[dim]starting the store node ...[/dim]")
        store = Recipe(
            "store node",
            (python, "-m", "kvstore.cli", "serve", "--log-level=WARNING", *common, *store_flags),
            "serving on",
            60,
        ).start()
        children.append(store.child)
        store_address = _store_address(store.line)
        console.print("[dim]starting the prefill and decode workers ...[/dim]")
        prefill = Recipe(
            "prefill worker",
            (
                python,
                "-m",
                "engine.cli",
                "prefill",
                "--log-level=WARNING",
                *common,
                *engine_flags,
                f"--engine.store={store_address}",
                f"--prefill.port={config.prefill.port}",
            ),
            '{"role"',
            120,
        ).start()
        children.append(prefill.child)
        prefill_address = json.loads(prefill.line)["address"]
        decode = Recipe(
            "decode worker",
            (
                python,
                "-m",
                "engine.cli",
                "decode",
                "--log-level=WARNING",
                *common,
                *engine_flags,
                f"--engine.store={store_address}",
                f"--decode.prefill={prefill_address}",
                f"--decode.port={config.decode.port}",
                f"--decode.data_port={config.decode.data_port}",
            ),
            '{"role"',
            120,
        ).start()
        children.append(decode.child)
        decode_address = json.loads(decode.line)["address"]
        _watch(supervisor, store, prefill, decode)
        router_config = dataclasses.replace(
            config,
            router=dataclasses.replace(
                config.router, prefill=prefill_address, decode=decode_address
            ),
        )
        return _serve_http(router_config, console, store_address)
    finally:
        live: list[Process] = [*supervisor.stop()] or [*children]
        for process in reversed(live):
            process.stop()
        console.print("[dim]stopped[/dim]")


def check_ports(config: EngineConfig, store_port: int) -> None:
    """Refuse to start when a port the stack needs is taken or named twice: a
    ``ConfigError`` naming the key and the port (0 means any free port; not checked).

    ``store_port`` is ``--store-port``: the store node's gRPC port, its metrics port
    (+1) and its data plane (+2).
    """
    wanted = [
        ("router.port (--port)", config.router.host, config.router.port),
        ("--store-port (server.port)", "127.0.0.1", store_port),
        ("--store-port (server.metrics_port = store port + 1)", "127.0.0.1", store_port + 1),
        ("--store-port (transfer.port = store port + 2)", "127.0.0.1", store_port + 2),
        ("prefill.port", config.prefill.host, config.prefill.port),
        ("decode.port", config.decode.host, config.decode.port),
        ("decode.data_port", config.decode.host, config.decode.data_port),
    ]
    owners: dict[int, str] = {}
    for key, host, port in wanted:
        if port == 0 or (key.startswith("--store-port") and store_port == 0):
            continue
        if port in owners:
            raise ConfigError(key, f"port {port} is also {owners[port]}; pick another")
        owners[port] = key
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise ConfigError(
                    key, f"port {port} on {host} is not free ({exc.strerror}); pick another"
                ) from None


def _serve_http(config: EngineConfig, console: Console, store_address: str) -> int:
    section = config.router
    failures: list[BaseException] = []

    async def open_service() -> RouterService:
        try:
            return await open_router(config)
        except Exception as exc:  # reported below in one line, not as uvicorn's traceback
            failures.append(exc)
            raise

    app = create_app(
        open_service,
        api_keys=section.api_keys,
        salt_by_api_key=section.salt_by_api_key,
        max_concurrency=section.max_concurrency,
        access_log=section.access_log,
        log_interval_s=section.log_interval_s,
    )
    quiet = _QuietStartupFailure(failures)
    logging.getLogger("uvicorn.error").addFilter(quiet)
    server = _Server(uvicorn.Config(app, host=section.host, port=section.port, log_level="warning"))
    name = served_model_name(config)
    url = f"http://{section.host}:{section.port}"

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.05)
        console.print(f"[bold green]Strata is up[/bold green] at {url} serving [bold]{name}[/bold]")
        console.print(f"store node {store_address} · chat: kvengine chat --url {url}")
        console.print(
            f"export STRATA_ADDRESS={store_address}   # then: kvstore admin stats",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        example = json.dumps({"model": name, "messages": [{"role": "user", "content": "Hello!"}]})
        console.print(
            f"curl {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{example}'",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        console.print("[dim]Ctrl-C stops everything[/dim]")

    async def main() -> None:
        task = asyncio.ensure_future(announce())
        try:
            await server.serve()
        finally:
            task.cancel()

    try:
        asyncio.run(main())
    except SystemExit:  # uvicorn exits (status 3) when the app fails to start
        if not failures:
            raise
    finally:
        logging.getLogger("uvicorn.error").removeFilter(quiet)
    if failures:
        raise RuntimeError(f"the router did not start: {failures[0]}")
    return 0 if server.started else 1


class _QuietStartupFailure(logging.Filter):
    """Drops uvicorn's traceback of a start-up failure that ``run_up`` reports itself."""

    def __init__(self, failures: list[BaseException]) -> None:
        super().__init__()
        self.failures = failures

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.failures and record.levelno >= logging.ERROR)


class _Server(uvicorn.Server):
    """Stops on SIGINT or SIGTERM like uvicorn's, but then returns (uvicorn re-raises the
    signal, which would end the process before its children are stopped)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handlers = {sig: signal.signal(sig, self.handle_exit) for sig in (SIGINT, SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def _watch(supervisor: Supervisor, store: Started, prefill: Started, decode: Started) -> None:
    """Restart each child on the ports its first instance got."""
    prefill_info, decode_info = json.loads(prefill.line), json.loads(decode.line)
    sticky = {
        store: [f"--server.port={_port(_store_address(store.line))}"],
        prefill: [f"--prefill.port={_port(prefill_info['address'])}"],
        decode: [f"--decode.port={_port(decode_info['address'])}"]
        + [f"--decode.data_port={_port(a)}" for a in decode_info["data_plane"][:1]],
    }
    for started, flags in sticky.items():
        supervisor.watch(started.recipe.name, started.child, started.recipe.restarter(flags))
    supervisor.begin()


def _store_address(line: str) -> str:
    """The address in the store node's "serving on <address>, ..." line."""
    return line.split("serving on ")[1].split(maxsplit=1)[0].rstrip(",")


def _port(address: str) -> str:
    return address.rsplit(":", 1)[1]


def _store_flags(config: EngineConfig, port: int) -> list[str]:
    """The store node's flags: loopback ports ``port`` to ``port + 2`` (7600-7602), DRAM
    from engine.store_bytes, its largest block one KV page of the model (pages of the
    store's tiers at least that large)."""
    text = load_tokenizer(config.engine.model_path or TINY_MODEL_PATH).config
    page = config.engine.page_spec(text).block_bytes
    return [
        "--server.host=127.0.0.1",
        f"--server.port={port}",
        f"--server.metrics_port={port + 1 if port else 0}",
        f"--transfer.port={port + 2 if port else 0}",
        f"--store.block_bytes={page}",
        f"--store.page_bytes={max(DEFAULT_PAGE_BYTES, page)}",
        f"--tiers.dram.capacity_bytes={max(config.engine.store_bytes, page)}",
    ]
