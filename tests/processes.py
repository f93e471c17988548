"""Store nodes and engine workers as real processes (``kvstore serve``, ``kvengine``)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.procs import free_port

ROOT = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment with the checkout first on the child's import path
    (what was on ``PYTHONPATH`` stays after it)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


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


class ServeProcess:
    """``kvstore serve`` in a child process; ``address`` once it says it is serving."""

    def __init__(self, **flags: str) -> None:
        self.port = int(flags.pop("server.port", free_port()))
        args = [sys.executable, "-m", "kvstore.cli", "serve", "--log-level", "WARNING"]
        values = {
            "server.port": str(self.port),
            "server.metrics_enabled": "false",
            "transfer.port": "0",
            **flags,
        }
        for key, value in values.items():
            args += [f"--{key}", value]
        env = child_env()
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT, text=True
        )
        self.address = f"127.0.0.1:{self.port}"
        self.output: list[str] = []
        self._wait_serving(timeout_s=30)

    def _wait_serving(self, timeout_s: float) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                self.output.append(line)
                if "serving on" in line:
                    return
            if self.proc.poll() is not None:
                break
        self.kill()
        raise RuntimeError("kvstore serve did not start:\n" + "".join(self.output))

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 15) -> int:
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class EngineProcess:
    """``kvengine prefill|decode`` in a child process; ``address`` once it is up."""

    def __init__(self, role: str, **flags: str) -> None:
        args = [sys.executable, "-m", "engine.cli", role, "--log-level", "WARNING"]
        for key, value in flags.items():
            args += [f"--{key}", value]
        env = child_env()
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT, text=True
        )
        self.output: list[str] = []
        self.info = self._wait_up(timeout_s=60)
        self.address: str = self.info["address"]

    def _wait_up(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                self.output.append(line)
                if line.startswith('{"role"'):
                    info: dict[str, Any] = json.loads(line)
                    return info
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError("kvengine did not start:\n" + "".join(self.output))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class UpProcess:
    """``kvengine up`` on free ports; ``url`` once it says it is up. ``stop`` sends
    SIGINT (Ctrl-C) and waits for everything to end."""

    def __init__(self, *args: str, timeout_s: float = 120) -> None:
        self.port = free_port()
        command = [
            sys.executable, "-m", "engine.cli", "up", "--port", str(self.port),
            "--store-port", "0", "--prefill.port", "0", "--decode.port", "0",
            "--decode.data_port", "0", "--engine.kv_cache_bytes", "32MiB",
            "--engine.store_bytes", "64MiB", *args,
        ]  # fmt: skip
        env = child_env(COLUMNS="300")
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT, text=True
        )
        self.output: list[str] = []
        self.url = f"http://127.0.0.1:{self.port}"
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 0.1)[0]:
                line = self.proc.stdout.readline()
                self.output.append(line)
                if "Strata is up at" in line:
                    threading.Thread(target=self._drain, daemon=True).start()
                    return
        self.stop()
        raise RuntimeError("kvengine up did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def lines(self) -> str:
        return "".join(self.output)

    def stop(self, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=10)

    def __enter__(self) -> UpProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
