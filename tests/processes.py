"""Store nodes, engine workers and ``kvengine up`` as real processes, on free ports.

Each is an ``engine.launch.Child`` (children keep this process's ``PYTHONPATH``, after
the checkout); ``children`` lists what is still running, for tests that check no
process is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from engine.launch import Child, free_port

ROOT = Path(__file__).resolve().parents[1]


def children() -> set[int]:
    """Live child processes of this test process (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def _flags(values: dict[str, str]) -> list[str]:
    return [part for key, value in values.items() for part in (f"--{key}", value)]


class ServeProcess(Child):
    """``kvstore serve``; ``address`` once it says it is serving."""

    def __init__(self, **flags: str) -> None:
        self.port = int(flags.pop("server.port", free_port()))
        values = {
            "server.port": str(self.port),
            "server.metrics_enabled": "false",
            "transfer.port": "0",
            **flags,
        }
        args = [sys.executable, "-m", "kvstore.cli", "serve", "--log-level", "WARNING"]
        super().__init__("kvstore serve", [*args, *_flags(values)], cwd=ROOT, port=self.port)
        self.address = f"127.0.0.1:{self.port}"
        self.wait_for_line("serving on", timeout_s=30)

    def __enter__(self) -> ServeProcess:
        return self


class EngineProcess(Child):
    """``kvengine prefill|decode``; ``address`` once it is up, ``info`` its JSON line."""

    def __init__(self, role: str, **flags: str) -> None:
        args = [sys.executable, "-m", "engine.cli", role, "--log-level", "WARNING"]
        super().__init__(f"kvengine {role}", [*args, *_flags(flags)], cwd=ROOT)
        self.info: dict[str, Any] = json.loads(self.wait_for_line('{"role"', timeout_s=60))
        self.address: str = self.info["address"]

    def __enter__(self) -> EngineProcess:
        return self


class UpProcess(Child):
    """``kvengine up`` on free ports; ``url`` once it says it is up. ``stop`` sends
    SIGINT (Ctrl-C) and waits for everything to end."""

    def __init__(self, *args: str, timeout_s: float = 120) -> None:
        port = free_port()
        command = [
            sys.executable, "-m", "engine.cli", "up", "--port", str(port),
            "--store-port", "0", "--prefill.port", "0", "--decode.port", "0",
            "--decode.data_port", "0", "--engine.kv_cache_bytes", "32MiB",
            "--engine.store_bytes", "64MiB", *args,
        ]  # fmt: skip
        super().__init__("kvengine up", command, env={"COLUMNS": "300"}, cwd=ROOT, port=port)
        self.url = f"http://127.0.0.1:{port}"
        self.wait_for_line("Strata is up at", timeout_s=timeout_s)

    def stop(self, sig: int = signal.SIGINT, grace_s: float = 30) -> int:
        return super().stop(sig, grace_s)

    def __enter__(self) -> UpProcess:
        return self
