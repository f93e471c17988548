"""``kvstore serve`` as a process: graceful shutdown on SIGTERM drains in-flight calls."""

from __future__ import annotations

import signal

import grpc
import pytest

from kvstore import codec
from kvstore._proto.strata.v1 import store_pb2, store_pb2_grpc
from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.errors import ServiceUnavailable
from kvstore.hashing import Namespace
from kvstore.layout import BlockSpec, KVDtype
from tests.processes import ServeProcess

BIG = Namespace("drain", BlockSpec(4, 8, 128, KVDtype.FLOAT32, 128))  # 4 MiB blocks


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_shutdown_drains_the_call_in_flight(sig: int) -> None:
    flags = {
        "store.block_bytes": str(BIG.block_bytes),
        "tiers.dram.capacity_bytes": str(40 * BIG.block_bytes),
        "server.grace_s": "10",
        "server.chunk_bytes": str(256 << 10),
    }
    with ServeProcess(**flags) as server:
        keys = [i.to_bytes(16, "little") for i in range(32)]
        async with StoreClient(server.address, CallOptions(timeout_s=30)) as client:
            ns = await client.register_namespace(BIG)
            for i in range(0, 32, 8):
                blocks = [bytes([j]) * BIG.block_bytes for j in range(i, i + 8)]
                await client.put(ns, keys[i : i + 8], blocks)  # type: ignore[arg-type]
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = store_pb2_grpc.StoreServiceStub(channel)
            stream = stub.Get(store_pb2.GetRequest(namespace_id=ns, keys=keys), timeout=30)
            received, signalled = 0, False
            async for message in stream:
                if message.WhichOneof("part") == "header":
                    assert message.header.num_hits == 32
                    continue
                received += len(message.data)
                if not signalled:
                    server.signal(sig)  # mid-stream: 128 MiB still to come
                    signalled = True
            assert received == 32 * BIG.block_bytes
        assert server.wait() == 0
        async with StoreClient(server.address, CallOptions(timeout_s=1, retries=0)) as late:
            with pytest.raises(ServiceUnavailable):
                await late.register_namespace(BIG)


async def test_bad_config_fails_fast_with_the_key_named() -> None:
    with pytest.raises(RuntimeError, match=r"tiers\.dram\.capacity_bytes"):
        ServeProcess(**{"tiers.dram.capacity_bytes": "0"})


def test_codec_names_fields() -> None:
    namespace = codec.namespace_from_pb(codec.namespace_to_pb(BIG))
    assert namespace == BIG
