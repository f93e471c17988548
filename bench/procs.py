"""Child processes for the service benchmark, each on a free port of 127.0.0.1.

* ``start_redis``: a throwaway ``redis-server`` (no persistence, no disk).
* ``start_strata``: ``kvstore serve`` (one store node, DRAM tier only, no metrics).
* ``SocketPeer``: a Python process that streams as many bytes as it is asked for, the
  raw single-stream TCP limit that both services are measured against.
* ``start_worker`` / ``wait_worker``: a ``kvengine`` prefill or decode worker, optionally
  pinned to cores; it is up when it prints its JSON line.

Every child is an ``engine.launch.Child`` (stopped with SIGTERM then SIGKILL by its
owner's ``with`` block, and by the kernel if the owner is killed outright). Readiness is
observed, never slept for: Redis answers PING, the node prints "serving on", the peer
connects back, a worker prints its JSON line.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from pathlib import Path
from types import TracebackType

from engine.launch import Child, free_port

_SCRIPT = Path(sys.executable).with_name("kvstore")  # the venv's console script
KVSTORE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "kvstore.cli"]
_ENGINE_SCRIPT = _SCRIPT.with_name("kvengine")
KVENGINE = (
    [str(_ENGINE_SCRIPT)] if _ENGINE_SCRIPT.exists() else [sys.executable, "-m", "engine.cli"]
)
WORKER_START_S = 180.0
SEND_BUFFER_BYTES = 4 << 20
_LENGTH = struct.Struct("<Q")  # a SocketPeer request: how many bytes to send; 0 = exit


def start_redis() -> Child:
    """``redis-server`` tuned for large values: no persistence, 16 MiB bulk strings."""
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--proto-max-bulk-len", str(16 << 20), "--daemonize", "no"]
    child = Child("redis", args, port=port)
    child.wait_until(lambda: answers_ping(port), timeout_s=10.0, what="answering PING")
    return child


def start_strata(block_bytes: int, capacity_bytes: int, chunk_bytes: int, **extra: object) -> Child:
    """``kvstore serve``: one node whose DRAM tier holds ``capacity_bytes``; ``extra``
    are more config flags (dotted keys with ``_`` for ``.``... as given)."""
    port = free_port()
    flags = {
        "server.port": port,
        "server.metrics_enabled": "false",
        "server.chunk_bytes": chunk_bytes,
        "server.grace_s": 1,
        "store.node_id": f"bench-{port}",
        "store.block_bytes": block_bytes,
        "tiers.dram.capacity_bytes": capacity_bytes,
        "transfer.port": 0,
        **extra,
    }
    args = [*KVSTORE, "serve", "--log-level", "WARNING"]
    args += [part for key, value in flags.items() for part in (f"--{key}", str(value))]
    child = Child("strata", args, port=port)
    child.wait_for_line("serving on", timeout_s=30.0)
    return child


class SocketPeer:
    """A child that sends N bytes on request over one loopback TCP connection."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        self.child = Child("socket-peer", [sys.executable, "-m", "bench.procs", str(port)])
        self._listener.settimeout(30.0)
        try:
            self._conn, _ = self._listener.accept()
        except BaseException:
            self.close()
            raise
        self._buffer = memoryview(bytearray(SEND_BUFFER_BYTES))

    def gbps(self, num_bytes: int) -> float:
        """Have the peer send ``num_bytes``; receive them with ``recv_into``; GB/s."""
        start = time.perf_counter()
        self._conn.sendall(_LENGTH.pack(num_bytes))
        left = num_bytes
        while left:
            got = self._conn.recv_into(self._buffer, min(left, len(self._buffer)))
            if not got:
                raise ConnectionError("socket peer closed the connection early")
            left -= got
        return num_bytes / (time.perf_counter() - start) / 1e9

    def close(self) -> None:
        try:
            if hasattr(self, "_conn"):
                self._conn.sendall(_LENGTH.pack(0))
                self._conn.close()
        except OSError:
            pass
        finally:
            self._listener.close()
            self.child.stop()

    def __enter__(self) -> SocketPeer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: object, tb: TracebackType | None
    ) -> None:
        self.close()


def answers_ping(port: int) -> bool:
    """Whether a Redis server answers PING on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _send_on_request(port: int) -> None:
    """The peer's side: connect, then answer each length request with that many bytes."""
    data = memoryview(bytearray(SEND_BUFFER_BYTES))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        while True:
            header = sock.recv(_LENGTH.size, socket.MSG_WAITALL)
            (left,) = _LENGTH.unpack(header) if len(header) == _LENGTH.size else (0,)
            if not left:
                return
            while left:
                step = min(left, len(data))
                sock.sendall(data[:step])
                left -= step


if __name__ == "__main__":
    _send_on_request(int(sys.argv[1]))


def start_worker(role: str, flags: dict[str, object], cpus: set[int] | None = None) -> Child:
    """``kvengine <role>`` with ``--key value`` flags, pinned to ``cpus`` if given (before
    its interpreter starts any thread). Not up yet: see ``wait_worker``."""
    args = [*KVENGINE, role, "--log-level", "WARNING"]
    args += [part for key, value in flags.items() for part in (f"--{key}", str(value))]
    child = Child(f"engine-{role}", args)
    if cpus is not None:
        try:
            pin(child.proc.pid, cpus)
        except BaseException:
            child.stop()
            raise
    return child


def wait_worker(child: Child, cpus: set[int] | None = None) -> str:
    """The worker's gRPC address once it is up (from the JSON line it prints). With
    ``cpus``, pins again the threads it started meanwhile and checks that every one of
    them is pinned."""
    info = json.loads(child.wait_for_line('{"role"', timeout_s=WORKER_START_S))
    if cpus is not None:
        pin(child.pid, cpus)
        for tid in os.listdir(f"/proc/{child.pid}/task"):
            if os.sched_getaffinity(int(tid)) != cpus:
                raise RuntimeError(f"{child.name}: thread {tid} is not pinned to {cpus}")
    return str(info["address"])


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` to ``cpus`` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that just ended
            continue
