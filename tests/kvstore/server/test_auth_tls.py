"""Bearer-token auth (store and admin tokens) and TLS, with a self-signed certificate."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.errors import ServiceUnavailable, Unauthenticated
from kvstore.hashing import Namespace
from tests.certs import self_signed
from tests.conftest import NAMESPACE, block_bytes, chain_keys
from tests.kvstore.server.conftest import NodeFactory

TOKENS = {"auth.token": "store-secret", "auth.admin_token": "admin-secret"}


async def test_store_calls_need_a_token(make_node: NodeFactory) -> None:
    node = await make_node(**TOKENS)
    for token, message in (("", "missing bearer token"), ("wrong", "invalid bearer token")):
        async with StoreClient(node.address, CallOptions(token=token, retries=0)) as client:
            with pytest.raises(Unauthenticated, match=message):
                await client.register_namespace(NAMESPACE)
    async with StoreClient(node.address, CallOptions(token="store-secret")) as client:
        ns = await client.register_namespace(NAMESPACE)
        await client.put(ns, chain_keys(1), [block_bytes(0)])
        assert (await client.get(ns, chain_keys(1))).num_hits == 1


async def test_admin_calls_need_the_admin_token(make_node: NodeFactory) -> None:
    node = await make_node(**TOKENS)
    async with StoreClient(node.address, CallOptions(token="store-secret", retries=0)) as client:
        with pytest.raises(Unauthenticated, match="admin calls need the admin token"):
            await client.stats()
    async with StoreClient(node.address, CallOptions(token="admin-secret")) as admin:
        assert (await admin.stats()).node_id == node.node.node_id
        await admin.register_namespace(NAMESPACE)  # the admin token works for store calls too
        config = await admin.config()
        auth = config["auth"]
        assert (auth["token"], auth["admin_token"], auth["reader_token"]) == ("<set>", "<set>", "")


async def test_a_reader_token_reads_but_cannot_write(make_node: NodeFactory) -> None:
    node = await make_node(**TOKENS, **{"auth.reader_token": "reader-secret"})
    async with StoreClient(node.address, CallOptions(token="store-secret")) as writer:
        ns = await writer.register_namespace(NAMESPACE)
        await writer.put(ns, chain_keys(1), [block_bytes(0)])
    options = CallOptions(token="reader-secret", retries=0)
    async with StoreClient(node.address, options) as reader:
        assert (await reader.get(ns, chain_keys(2))).num_hits == 1
        assert [p.num_blocks for p in await reader.lookup(ns, chain_keys(2))] == [1]
        for write in (
            reader.register_namespace(NAMESPACE),
            reader.remove(ns, chain_keys(1)),
            reader.pin(ns, chain_keys(1), ttl_s=5),
        ):
            with pytest.raises(Unauthenticated, match="need a writer token"):
                await write
        with pytest.raises(Unauthenticated, match="admin calls need the admin token"):
            await reader.stats()
    assert node.node.store.lookup(ns, chain_keys(2)).num_blocks == 1


async def test_stats_show_namespace_ids_not_salts(make_node: NodeFactory) -> None:
    node = await make_node(**TOKENS)
    salted = Namespace(NAMESPACE.model_id, NAMESPACE.spec, salt="tenant-a-secret-salt")
    async with StoreClient(node.address, CallOptions(token="admin-secret")) as admin:
        ns = await admin.register_namespace(salted)
        await admin.put(ns, chain_keys(1), [block_bytes(0)])
        stats = await admin.stats()
    assert [n.namespace_id for n in stats.namespaces] == [ns]
    assert b"tenant-a-secret-salt" not in stats.SerializeToString()


async def test_health_checks_stay_open(make_node: NodeFactory) -> None:
    node = await make_node(**TOKENS)
    async with grpc.aio.insecure_channel(node.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_tls_round_trip_and_plaintext_refused(make_node: NodeFactory, tmp_path: Path) -> None:
    cert = self_signed(tmp_path)
    node = await make_node(
        **{
            "tls.enabled": "true",
            "tls.cert_file": str(cert.cert),
            "tls.key_file": str(cert.key),
            "server.host": "localhost",
        }
    )
    async with StoreClient(node.address, CallOptions(tls_ca_file=cert.cert)) as client:
        ns = await client.register_namespace(NAMESPACE)
        await client.put(ns, chain_keys(2), [block_bytes(0), block_bytes(1)])
        result = await client.get(ns, chain_keys(2))
        assert result.num_hits == 2 and bytes(result.blocks[1]) == block_bytes(1)
    async with StoreClient(node.address, CallOptions(timeout_s=1, retries=0)) as plaintext:
        with pytest.raises(ServiceUnavailable):
            await plaintext.register_namespace(NAMESPACE)
