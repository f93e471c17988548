"""Malformed requests, generated: each gets the right status code and a message naming
the field, and the server stays healthy (it answers a health check and real work)."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore import codec
from kvstore._proto.strata.v1 import admin_pb2, admin_pb2_grpc, store_pb2, store_pb2_grpc
from kvstore.server.serve import RunningNode, start_node
from kvstore.types import MAX_KEYS_PER_REQUEST
from tests.conftest import NAMESPACE, block_bytes, chain_keys
from tests.kvstore.server.conftest import node_config

NS = NAMESPACE.id
INVALID = grpc.StatusCode.INVALID_ARGUMENT

bad_key = st.binary(max_size=40).filter(lambda b: len(b) != 16)
good_key = st.binary(min_size=16, max_size=16)


def invalid_requests() -> st.SearchStrategy[tuple[str, object, str]]:
    """(method, request, field the message must name)."""
    keys_with_a_bad_one = st.tuples(
        st.lists(good_key, max_size=3), bad_key, st.lists(good_key, max_size=3)
    )
    return st.one_of(
        bad_key.map(
            lambda ns: (
                "Get",
                store_pb2.GetRequest(namespace_id=ns, keys=[b"k" * 16]),
                "namespace_id",
            )
        ),
        keys_with_a_bad_one.map(
            lambda t: (
                "Get",
                store_pb2.GetRequest(namespace_id=NS, keys=[*t[0], t[1], *t[2]]),
                f"keys[{len(t[0])}]",
            )
        ),
        keys_with_a_bad_one.map(
            lambda t: (
                "Exists",
                store_pb2.KeysRequest(namespace_id=NS, keys=[*t[0], t[1], *t[2]]),
                f"keys[{len(t[0])}]",
            )
        ),
        st.floats(max_value=-1e-9, allow_nan=False).map(
            lambda ttl: ("Pin", store_pb2.PinRequest(namespace_id=NS, keys=[], ttl_s=ttl), "ttl_s")
        ),
        st.sampled_from(["", "int4", "FLOAT16"]).map(
            lambda dtype: ("RegisterNamespace", _namespace_with(dtype=dtype), "namespace.dtype")
        ),
        st.sampled_from(["num_layers", "head_dim", "block_tokens"]).map(
            lambda name: ("RegisterNamespace", _namespace_with(**{name: 0}), f"namespace.{name}")
        ),
        st.integers(4, 100).map(
            lambda t: ("Evict", admin_pb2.EvictRequest(tier=t, num_blocks=1), "tier")
        ),
        st.just(("Evict", admin_pb2.EvictRequest(tier=2, num_blocks=0), "num_blocks")),
        bad_key.filter(len).map(  # an empty parent means "a root": valid
            lambda parent: (
                "Put",
                [
                    store_pb2.PutRequest(
                        header=store_pb2.PutHeader(namespace_id=NS, keys=[b"k" * 16], parent=parent)
                    )
                ],
                "parent",
            )
        ),
        st.integers(1, 5000).map(lambda n: ("Put", _put(chain_keys(1), [b"x" * n]), "data")),
        st.just(("Put", [store_pb2.PutRequest(data=b"x")], "data")),
        st.just(("Put", [store_pb2.PutRequest()], "part")),
        st.just(("Put", [], "header")),
        st.sampled_from([b"\x12", b"\x12\xff", b"\x12\x05ab", b"\x0a\x09"]).map(
            lambda raw: ("RawPut", raw, "data")  # hand-framed data messages cut short
        ),
        st.integers(MAX_KEYS_PER_REQUEST + 1, MAX_KEYS_PER_REQUEST + 3).map(
            lambda n: (
                "Lookup",
                store_pb2.LookupRequest(namespace_id=NS, keys=[b"k" * 16] * n),
                "keys",
            )
        ),
        st.just(
            (
                "BatchGet",
                store_pb2.BatchGetRequest(
                    namespace_id=NS,
                    lists=[store_pb2.KeyList(keys=[b"k" * 16] * (MAX_KEYS_PER_REQUEST // 2 + 1))]
                    * 2,
                ),
                "lists",
            )
        ),
    )


def _namespace_with(**fields: object) -> store_pb2.RegisterNamespaceRequest:
    message = codec.namespace_to_pb(NAMESPACE)
    for name, value in fields.items():
        setattr(message, name, value)
    return store_pb2.RegisterNamespaceRequest(namespace=message)


def _put(keys: list[bytes], data: list[bytes]) -> list[store_pb2.PutRequest]:
    header = store_pb2.PutHeader(namespace_id=NS, keys=keys)
    return [store_pb2.PutRequest(header=header), *(store_pb2.PutRequest(data=d) for d in data)]


async def _call(channel: grpc.aio.Channel, method: str, request: object) -> grpc.StatusCode:
    store, admin = (
        store_pb2_grpc.StoreServiceStub(channel),
        admin_pb2_grpc.AdminServiceStub(channel),
    )
    try:
        if method == "Evict":
            await admin.Evict(request, timeout=5)
        elif method == "Put":
            await store.Put(iter(request), timeout=5)  # type: ignore[call-overload]
        elif method == "RawPut":  # a valid header, then raw bytes as the next message
            header = _put(chain_keys(1), [])[0].SerializeToString()
            raw_put = channel.stream_unary(
                "/strata.v1.StoreService/Put",
                request_serializer=lambda b: b,
                response_deserializer=store_pb2.PutResponse.FromString,
            )
            await raw_put(iter([header, request]), timeout=5)
        elif method in ("Get", "BatchGet"):
            async for _ in getattr(store, method)(request, timeout=5):
                pass
        else:
            await getattr(store, method)(request, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details()  # type: ignore[return-value]
    return grpc.StatusCode.OK, ""  # type: ignore[return-value]


def test_invalid_requests_get_invalid_argument_and_the_server_stays_healthy() -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # grpc.aio channels bind to the current loop
    running: RunningNode = loop.run_until_complete(start_node(node_config()))
    channel = grpc.aio.insecure_channel(running.address)
    store = store_pb2_grpc.StoreServiceStub(channel)
    loop.run_until_complete(
        store.RegisterNamespace(
            store_pb2.RegisterNamespaceRequest(namespace=codec.namespace_to_pb(NAMESPACE))
        )
    )

    @settings(
        max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(invalid_requests())
    def check(case: tuple[str, object, str]) -> None:
        method, request, field = case
        code, details = loop.run_until_complete(_call(channel, method, request))
        assert code == INVALID, (method, code, details)
        assert details.startswith(field), (field, details)

    try:
        check()
        health = health_pb2_grpc.HealthStub(channel)
        reply = loop.run_until_complete(health.Check(health_pb2.HealthCheckRequest()))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        keys = chain_keys(2)
        code, _ = loop.run_until_complete(
            _call(channel, "Put", _put(keys, [block_bytes(0), block_bytes(1)]))
        )
        assert code == grpc.StatusCode.OK
        assert running.node.store.lookup(NS, keys).num_blocks == 2
        assert len(running.node.store._writes.reservations) == 0  # nothing left half-open
    finally:
        loop.run_until_complete(channel.close())
        loop.run_until_complete(running.stop(grace_s=0.5))
        asyncio.set_event_loop(None)
        loop.close()
