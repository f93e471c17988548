"""Hostile and unlucky peers of a data-plane server: bounded memory before and after
HELLO, clean protocol errors for malformed frames, an accept loop that outlives
accept errors, idle timeouts and a per-peer connection cap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.access import Access
from kvstore.transfer import frames
from kvstore.transfer.frames import Op, Status
from kvstore.transfer.transports import RangeRead
from tests.conftest import StoreFactory
from tests.kvstore.transfer.conftest import EngineFactory, ServerFactory, segment
from tests.processes import ROOT


def _connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=3)
    return sock


def _request(sock: socket.socket, op: Op, payload: bytes) -> None:
    sock.sendall(frames.pack_header(op, 1, len(payload)) + payload)


def _reply(sock: socket.socket) -> tuple[frames.Header, bytes]:
    header = frames.unpack_header(sock.recv(frames.HEADER_BYTES, socket.MSG_WAITALL))
    body = sock.recv(header.payload_bytes, socket.MSG_WAITALL) if header.payload_bytes else b""
    return header, body


def _greeted(address: str) -> socket.socket:
    sock = _connect(address)
    _request(sock, Op.HELLO, frames.pack_str(""))
    assert _reply(sock)[0].status is Status.OK
    return sock


def _closed(sock: socket.socket, within_s: float = 3.0) -> bool:
    """The server hung up (after any reply bytes) within ``within_s``."""
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


@pytest.fixture
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG, logger="kvstore.transfer.server")
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_before_hello_a_peer_cannot_make_the_server_allocate(
    make_server: ServerFactory,
) -> None:
    server = await make_server(segment("s", 64), access=Access(writer_token="secret"))
    sock = _connect(server.addresses[0])
    sock.sendall(frames.pack_header(Op.HELLO, 1, frames.MAX_METADATA_BYTES))  # and no payload
    header, body = await asyncio.to_thread(_reply, sock)
    assert header.status is Status.DENIED and b"at most 4096" in body
    assert await asyncio.to_thread(_closed, sock)


async def test_a_refused_write_of_huge_ranges_is_hung_up_on_not_allocated(
    make_server: ServerFactory, no_server_errors: None
) -> None:
    server = await make_server(segment("s", 64))
    sock = await asyncio.to_thread(_greeted, server.addresses[0])
    ranges = [frames.WriteRange(0, 1 << 40, 0), frames.WriteRange(1 << 41, 1 << 40, 0)]
    _request(sock, Op.WRITE_RANGES, frames.pack_write("s", 1, 0, ranges))
    header, body = await asyncio.to_thread(_reply, sock)
    assert header.status is Status.INVALID and b"refused ranges" in body
    assert await asyncio.to_thread(_closed, sock)


async def test_a_refused_write_drains_its_bytes_and_keeps_the_connection(
    make_server: ServerFactory, no_server_errors: None
) -> None:
    server = await make_server(segment("s", 64))
    sock = await asyncio.to_thread(_greeted, server.addresses[0])
    _request(sock, Op.WRITE_RANGES, frames.pack_write("s", 1, 0, [frames.WriteRange(60, 8, 0)]))
    sock.sendall(bytes(8))
    header, body = await asyncio.to_thread(_reply, sock)
    assert header.status is Status.INVALID and b"outside segment" in body
    _request(sock, Op.READ_RANGES, frames.pack_ranges("s", [frames.Range(0, 4)]))
    assert (await asyncio.to_thread(_reply, sock))[0].status is Status.OK


@pytest.mark.parametrize(
    ("op", "payload"),
    [
        (Op.READ_KEYS, b"\x01"),  # too short for a namespace id
        (Op.READ_KEYS, bytes(16) + b"\xff\xff\xff\xff"),  # 4 G keys declared
        (Op.READ_RANGES, b"\x05\x00\x00\x00\xff\xfe"),  # a string past the end, not UTF-8
        (Op.WRITE_RANGES, frames.pack_str("s")),  # no transfer id, layer or count
        (Op.RELEASE, b"\x02\x00\x00\x00" + bytes(9)),  # two ids in 9 bytes
        (Op.PUT_KEYS, b"\x07" + bytes(40)),  # a parent flag that is neither 0 nor 1
        (Op.COMMIT, b"\x01"),
    ],
)
async def test_malformed_frames_get_a_clean_protocol_error(
    make_store: StoreFactory,
    make_server: ServerFactory,
    no_server_errors: None,
    op: Op,
    payload: bytes,
) -> None:
    server = await make_server(segment("s", 64), store=await make_store())
    sock = await asyncio.to_thread(_greeted, server.addresses[0])
    _request(sock, op, payload)
    if op is not Op.RELEASE:  # fire and forget: no reply, only the hang-up
        header, _ = await asyncio.to_thread(_reply, sock)
        assert header.status is Status.INVALID
    assert await asyncio.to_thread(_closed, sock)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=96), op=st.sampled_from(list(Op)))
def test_decoders_raise_only_frame_errors(data: bytes, op: Op) -> None:
    raw = memoryview(data)
    decoders = [
        lambda: frames.unpack_keys(raw),
        lambda: frames.unpack_hits(raw),
        lambda: frames.unpack_ranges(raw),
        lambda: frames.unpack_write(raw),
        lambda: frames.unpack_lease(raw),
        lambda: frames.unpack_put(raw),
        lambda: frames.unpack_ids(raw),
        lambda: frames.unpack_reservation(raw),
        lambda: frames.unpack_put_result(raw),
        lambda: frames.unpack_u64(raw),
        lambda: frames.unpack_str(raw, 0),
        lambda: frames.unpack_checksums(raw, len(data) // 4),
    ]
    for decode in decoders:
        with contextlib.suppress(frames.FrameError):
            decode()


@settings(max_examples=40, deadline=None)
@given(
    frames_=st.lists(
        st.tuples(st.sampled_from(list(Op)), st.binary(max_size=64), st.binary(max_size=32)),
        min_size=1,
        max_size=4,
    )
)
def test_a_fuzzed_peer_never_crashes_a_connection_task(
    fuzz_address: str, frames_: list[tuple[Op, bytes, bytes]]
) -> None:
    """Random ops with random metadata (and random trailing bytes): the server answers or
    hangs up; the module-scoped server checks afterwards that it logged no error."""
    sock = _greeted(fuzz_address)
    try:
        for op, payload, trailing in frames_:
            sock.sendall(frames.pack_header(op, 1, len(payload)) + payload + trailing)
    except OSError:
        pass  # hung up on: fine
    finally:
        sock.close()


@pytest.fixture(scope="module")
def fuzz_address() -> Iterator[str]:
    """A data-plane server with a store, in a child process that fails loudly on any
    ERROR log line or unretrieved task exception."""
    script = textwrap.dedent(
        """
        import asyncio, logging, sys, tempfile
        from pathlib import Path
        from kvstore.store import NodeStore
        from kvstore.server.dataplane import serve_store
        from kvstore.transfer.segments import Segment, SegmentRegistry
        from kvstore.transfer.server import SegmentServer
        from tests.conftest import NAMESPACE, store_config

        logging.basicConfig(level=logging.ERROR, stream=sys.stdout)

        async def main():
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _l, ctx: print("ERROR", ctx["message"], flush=True))
            config = store_config(Path(tempfile.mkdtemp()), **{"tiers.nvme.enabled": "false"})
            store = await NodeStore.open(config)
            store.register_namespace(NAMESPACE)
            registry = SegmentRegistry()
            registry.register(Segment("s", memoryview(bytearray(4096))))
            server = SegmentServer("fuzz", "host-a", registry, idle_timeout_s=2.0)
            serve_store(server, store)
            await server.start(["127.0.0.1"], 0)
            print("PORT", server.addresses[0].rpartition(":")[2], flush=True)
            await loop.run_in_executor(None, sys.stdin.read)
            await server.close()
            await store.close()

        asyncio.run(main())
        """
    )
    proc = _child(script)
    try:
        yield _wait_port(proc)
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        output = proc.stdout.read()
        proc.wait(10)
        assert "ERROR" not in output and "Traceback" not in output, output


def _child(script: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
        text=True,
    )


def _wait_port(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PORT"), line + proc.stdout.read()
    return f"127.0.0.1:{line.split()[1]}"


def test_the_accept_loop_survives_running_out_of_descriptors() -> None:
    """Under a low RLIMIT_NOFILE, a burst of connections makes accept fail with EMFILE;
    once they are gone, a new client is served."""
    script = textwrap.dedent(
        """
        import asyncio, os, resource, sys
        from kvstore.transfer.segments import Segment, SegmentRegistry
        from kvstore.transfer.server import SegmentServer

        async def main():
            registry = SegmentRegistry()
            registry.register(Segment("s", memoryview(bytes(range(64)) * 4)))
            server = SegmentServer("emfile", "host-a", registry)
            await server.start(["127.0.0.1"], 0)
            num_open = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (num_open + 16, num_open + 16))
            print("PORT", server.addresses[0].rpartition(":")[2], flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

        asyncio.run(main())
        """
    )
    proc = _child(script)
    try:
        address = _wait_port(proc)
        burst = [_connect(address) for _ in range(64)]
        time.sleep(0.5)  # the server accepts what it can, then hits EMFILE
        for sock in burst:
            sock.close()
        time.sleep(0.3)
        sock = _greeted(address)
        _request(sock, Op.READ_RANGES, frames.pack_ranges("s", [frames.Range(0, 4)]))
        header, _ = _reply(sock)
        assert header.status is Status.OK
        assert sock.recv(4, socket.MSG_WAITALL) == bytes(range(4))
        sock.close()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


async def test_idle_connections_are_closed(make_server: ServerFactory) -> None:
    server = await make_server(segment("s", 64), idle_timeout_s=0.2)
    silent = _connect(server.addresses[0])  # never says anything
    greeted = await asyncio.to_thread(_greeted, server.addresses[0])
    start = time.monotonic()
    assert await asyncio.to_thread(_closed, silent)
    assert await asyncio.to_thread(_closed, greeted)
    assert time.monotonic() - start < 2


async def test_a_pooled_connection_the_server_closed_is_not_reused(
    make_server: ServerFactory, make_engine: EngineFactory
) -> None:
    server = await make_server(segment("s", 64, fill=7), idle_timeout_s=0.2)
    peer = await make_engine().connect(server.addresses)
    dst = memoryview(bytearray(8))
    await peer.transport.read_ranges([RangeRead("s", 0, dst)])
    await asyncio.sleep(0.5)  # every pooled connection is hung up on meanwhile
    dst[:] = bytes(8)
    await peer.transport.read_ranges([RangeRead("s", 0, dst)])
    assert bytes(dst) == bytes([7]) * 8


async def test_connections_per_peer_are_capped(make_server: ServerFactory) -> None:
    server = await make_server(segment("s", 64), max_connections_per_peer=2)
    first = await asyncio.to_thread(_greeted, server.addresses[0])
    second = await asyncio.to_thread(_greeted, server.addresses[0])
    third = _connect(server.addresses[0])
    assert await asyncio.to_thread(_closed, third)
    first.close()
    await asyncio.sleep(0.1)
    fourth = await asyncio.to_thread(_greeted, server.addresses[0])
    second.close()
    fourth.close()
