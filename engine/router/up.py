"""``kvengine up``: the whole stack on one machine, in one command.

Starts, as child processes, a store node (embedded metadata; 7600-7602), a prefill worker
using it (7610) and a decode worker (7620, data plane 7621); then runs the router and the
HTTP endpoint in this process (``router.port``, 8000). The store node is the prefix cache
(the prefill worker keeps no cache of its own unless ``--engine.prefix_caching true``), so
``kvstore admin stats`` shows every reuse. Prints the URL and an example
request once everything answers. Ctrl-C (or SIGTERM) stops the endpoint, then the
children (SIGTERM, then SIGKILL after a grace period); children also die with this
process if it is killed outright.

While it runs, a ``Supervisor`` restarts any child that dies (with back-off, on the
ports it had), and the endpoint answers 503 while a role has no healthy worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from signal import SIGINT, SIGTERM
from typing import IO

import uvicorn
from rich.console import Console

from engine.config import EngineConfig
from engine.model.loader import TINY_MODEL_PATH, load_tokenizer
from engine.router.api import create_app
from engine.router.service import open_router
from engine.router.supervisor import Process, Supervisor

GRACE_S = 10.0


class Child:
    """A child process that says it is up on one of its output lines."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        ready: str,
        timeout_s: float,
        cancel: threading.Event | None = None,
    ) -> None:
        self.name, self.args, self.ready, self.timeout_s = name, list(args), ready, timeout_s
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [*prefix, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.output: list[str] = []
        self.line = self._wait(ready, timeout_s, cancel or threading.Event())
        self._drain = threading.Thread(target=self._forward, name=f"{name} output", daemon=True)
        self._drain.start()

    def _forward(self) -> None:
        """Pass the child's later output on (it would block on a full pipe otherwise)."""
        out = self.proc.stdout
        assert out is not None
        for line in out:
            sys.stderr.write(f"[{self.name}] {line}")

    def poll(self) -> int | None:
        return self.proc.poll()

    def restarter(self, sticky: Sequence[str]) -> Callable[[threading.Event], Child]:
        """How to start this child again: same arguments, then ``sticky`` (its ports)."""
        args = [*self.args, *sticky]
        return lambda cancel: Child(self.name, args, self.ready, self.timeout_s, cancel)

    def _wait(self, ready: str, timeout_s: float, cancel: threading.Event) -> str:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None and not cancel.is_set():
            if select.select([out], [], [], 0.1)[0]:
                line = out.readline()
                self.output.append(line)
                if ready in line:
                    return line
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n" + "".join(self.output[-30:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
    common = [f"--config={config_file}"] if config_file else []
    # the store node is the cache here (so `kvstore admin stats` shows every reuse),
    # unless asked for a first-level cache in the prefill worker too
    engine_flags = ["--engine.prefix_caching=false"] + [
        f"--{k}={v}" for k, v in overrides.items() if k.startswith("engine.")
    ]
    try:
        store_flags = _store_flags(config, store_port)
        console.print("[dim]starting the store node ...[/dim]")
        store = Child(
            "store node",
            [python, "-m", "kvstore.cli", "serve", "--log-level=WARNING", *common, *store_flags],
            "serving on",
            60,
        )
        children.append(store)
        store_address = store.line.split("serving on ")[1].split()[0].rstrip(",")
        console.print("[dim]starting the prefill and decode workers ...[/dim]")
        prefill = Child(
            "prefill worker",
            [
                python,
                "-m",
                "engine.cli",
                "prefill",
                "--log-level=WARNING",
                *common,
                *engine_flags,
                f"--engine.store={store_address}",
                f"--prefill.port={config.prefill.port}",
            ],
            '{"role"',
            120,
        )
        children.append(prefill)
        prefill_address = json.loads(prefill.line)["address"]
        decode = Child(
            "decode worker",
            [
                python,
                "-m",
                "engine.cli",
                "decode",
                "--log-level=WARNING",
                *common,
                *engine_flags,
                "--engine.store=none",
                f"--decode.prefill={prefill_address}",
                f"--decode.port={config.decode.port}",
                f"--decode.data_port={config.decode.data_port}",
            ],
            '{"role"',
            120,
        )
        children.append(decode)
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


def _serve_http(config: EngineConfig, console: Console, store_address: str) -> int:
    section = config.router
    app = create_app(
        lambda: open_router(config),
        api_key=section.api_key,
        max_concurrency=section.max_concurrency,
    )
    server = _Server(uvicorn.Config(app, host=section.host, port=section.port, log_level="warning"))
    model = load_tokenizer(config.engine.model_path or TINY_MODEL_PATH).config.model_id
    name = section.model_name or model
    url = f"http://{section.host}:{section.port}"

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.05)
        console.print(f"[bold green]Strata is up[/bold green] at {url} serving [bold]{name}[/bold]")
        console.print(f"store node {store_address} · chat: kvengine chat --url {url}")
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

    asyncio.run(main())
    return 0 if server.started else 1


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


def _watch(supervisor: Supervisor, store: Child, prefill: Child, decode: Child) -> None:
    """Restart each child on the ports its first instance got."""
    store_address = store.line.split("serving on ")[1].split()[0].rstrip(",")
    prefill_info, decode_info = json.loads(prefill.line), json.loads(decode.line)
    sticky = {
        store: [f"--server.port={_port(store_address)}"],
        prefill: [f"--prefill.port={_port(prefill_info['address'])}"],
        decode: [f"--decode.port={_port(decode_info['address'])}"]
        + [f"--decode.data_port={_port(a)}" for a in decode_info["data_plane"][:1]],
    }
    for child, flags in sticky.items():
        supervisor.watch(child.name, child, child.restarter(flags))
    supervisor.begin()


def _port(address: str) -> str:
    return address.rsplit(":", 1)[1]


def _store_flags(config: EngineConfig, port: int) -> list[str]:
    """The store node's flags: loopback ports ``port`` to ``port + 2`` (7600-7602), DRAM
    from engine.store_bytes, slots the size of one KV page of the model."""
    text = load_tokenizer(config.engine.model_path or TINY_MODEL_PATH).config
    dtype_bytes = 2 if (config.engine.dtype or text.torch_dtype) in ("bfloat16", "float16") else 4
    page = (
        text.num_layers
        * 2
        * config.engine.page_tokens
        * text.num_kv_heads
        * text.head_dim
        * dtype_bytes
    )
    return [
        "--server.host=127.0.0.1",
        f"--server.port={port}",
        f"--server.metrics_port={port + 1 if port else 0}",
        f"--transfer.port={port + 2 if port else 0}",
        f"--store.block_bytes={page}",
        f"--tiers.dram.capacity_bytes={max(config.engine.store_bytes, page)}",
    ]
