"""What the chaos harness breaks: store nodes with Redis, and ``kvengine up``.

* ``StoreStack``: Redis and N ``kvstore serve`` nodes (64 KiB blocks, DRAM, optional
  NVMe), each on free loopback ports, restartable on the same port after a kill -9.
* ``UpStack``: ``kvengine up`` on free ports chosen here, so that every port of every
  role (store gRPC, metrics, data plane; prefill, decode and its data plane; HTTP) is
  known to the hostile-frame fault; ``pid_of(role)`` finds a child's current process.

Invariants: every process is an ``engine.launch.Child`` (parent-death signal, stopped
on exit); readiness is observed, never slept for.
"""

from __future__ import annotations

import contextlib
import socket
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.procs import KVENGINE, answers_ping, start_strata
from engine.launch import Child, free_port
from kvstore.hashing import Namespace
from kvstore.layout import BlockSpec, KVDtype

# 64 KiB blocks: 2 layers x (K, V) x 64 tokens x 2 heads x 64 dims x 2 bytes
SPEC = BlockSpec(num_layers=2, num_kv_heads=2, head_dim=64, dtype=KVDtype.FLOAT16, block_tokens=64)
NAMESPACE = Namespace("chaos-model", SPEC)
MODEL = "strata-tiny-v1"


def start_redis_on(port: int) -> Child:
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--daemonize", "no"]
    child = Child("redis", args, port=port)
    child.wait_until(lambda: answers_ping(port), timeout_s=10.0, what="answering PING")
    return child


class StoreStack:
    def __init__(self, num_nodes: int, *, dram_bytes: int = 32 << 20, redis: bool = True,
                 **extra: object) -> None:  # fmt: skip
        self._stack = ExitStack()
        self.redis_port = free_port()
        self.redis: Child | None = None
        self.extra: dict[str, object] = {
            "tiers.dram.capacity_bytes": dram_bytes,
            "metadata.node_ttl_s": 2,
            "metadata.heartbeat_interval_s": 0.5,
            "server.peer_timeout_s": 2,
            **extra,
        }
        if redis:
            self.redis = start_redis_on(self.redis_port)
            self.extra |= {"metadata.backend": "redis", "metadata.redis_url": self.redis_url}
        self.nodes: list[Child] = []
        try:
            for i in range(num_nodes):
                self.nodes.append(self._node(i, free_port()))
        except BaseException:
            self.close()
            raise

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def address(self, i: int) -> str:
        return f"127.0.0.1:{self.nodes[i].port}"

    def _node(self, i: int, port: int) -> Child:
        flags = {**self.extra, "store.node_id": f"chaos-{i}", "server.port": port}
        dram_bytes = flags.pop("tiers.dram.capacity_bytes")
        child = start_strata(SPEC.block_bytes, int(str(dram_bytes)), 1 << 20, **flags)
        child.port = port  # start_strata's own choice was overridden by server.port
        return child

    def kill_node(self, i: int) -> None:
        self.nodes[i].kill()

    def restart_node(self, i: int) -> None:
        self.nodes[i].stop()
        self.nodes[i] = self._node(i, self.nodes[i].port)

    def kill_redis(self) -> None:
        assert self.redis is not None
        self.redis.kill()

    def restart_redis(self) -> None:
        assert self.redis is not None
        self.redis.stop()
        self.redis = start_redis_on(self.redis_port)

    def close(self) -> None:
        for child in [*self.nodes, *([self.redis] if self.redis else [])]:
            child.stop()

    def __enter__(self) -> StoreStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _free_run(length: int) -> int:
    """The first of ``length`` consecutive free ports."""
    while True:
        base = free_port()
        try:
            for offset in range(1, length):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue


class UpStack:
    """``kvengine up`` with every port chosen here."""

    def __init__(self) -> None:
        self.store_port = _free_run(3)
        self.ports = {
            "store gRPC": self.store_port,
            "store metrics": self.store_port + 1,
            "store data plane": self.store_port + 2,
            "prefill gRPC": free_port(),
            "decode gRPC": free_port(),
            "decode data plane": free_port(),
            "HTTP": free_port(),
        }
        args = [*KVENGINE, "up", "--port", str(self.ports["HTTP"]),
                "--store-port", str(self.store_port),
                "--prefill.port", str(self.ports["prefill gRPC"]),
                "--decode.port", str(self.ports["decode gRPC"]),
                "--decode.data_port", str(self.ports["decode data plane"]),
                "--engine.kv_cache_bytes", "32MiB", "--engine.store_bytes", "64MiB"]  # fmt: skip
        self.child = Child("kvengine-up", args)
        self.child.wait_for_line("Strata is up at", 240.0)
        self.url = f"http://127.0.0.1:{self.ports['HTTP']}"

    def pid_of(self, role: str) -> int | None:
        """The current process of a child: 'store', 'prefill' or 'decode'."""
        parent = self.child.proc.pid
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            for pid in task.read_text().split():
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except FileNotFoundError:
                    continue
                wanted = b"serve" if role == "store" else role.encode()
                if wanted in argv:
                    return int(pid)
        return None

    def wait_for(self, role: str, not_pid: int, timeout_s: float) -> float | None:
        """Seconds until a new process of ``role`` (not ``not_pid``) exists."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            pid = self.pid_of(role)
            if pid is not None and pid != not_pid:
                return time.monotonic() - start
            time.sleep(0.1)
        return None

    def wait_healthy(self, timeout_s: float) -> float | None:
        """When (monotonic) ``/health`` answered 200 again; None if not within the time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic()
            time.sleep(0.1)
        return None

    def log(self) -> str:
        return self.child.output()

    def close(self) -> None:
        self.child.stop(grace_s=30)

    def __enter__(self) -> UpStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
