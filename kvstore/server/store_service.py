"""The StoreService servicer: decode, call the node, encode. Nothing else.

Puts stream a header then data messages per chain; the slots are reserved when the
header arrives and each data message is copied straight into them (a disk tier gets
pooled staging buffers). Gets stream a header then data messages per key list, sent
from pinned slot views; the rest of a run held by a peer is appended (see ``node``).
Data messages are framed by hand on both paths (``wire``): the same bytes on the wire,
without protobuf's copies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from kvstore import codec
from kvstore._proto.strata.v1 import store_pb2, store_pb2_grpc
from kvstore.errors import InvalidArgument
from kvstore.hashing import checksum
from kvstore.reservations import PutResult, Reservation
from kvstore.server.errors import grpc_errors
from kvstore.server.node import StoreNode
from kvstore.streams import BlockAssembler, chunks
from kvstore.types import MAX_KEYS_PER_REQUEST, BlockKey, NamespaceId
from kvstore.wire import Data, Malformed, encode_data, parse_put_request, serialize

Context = grpc.aio.ServicerContext


class StoreServicer(store_pb2_grpc.StoreServiceServicer):
    def __init__(self, node: StoreNode) -> None:
        self.node = node
        self.store = node.store
        self.chunk_bytes = node.config.server.chunk_bytes

    @grpc_errors
    async def RegisterNamespace(
        self, request: store_pb2.RegisterNamespaceRequest, context: Context
    ) -> store_pb2.RegisterNamespaceResponse:
        namespace = codec.namespace_from_pb(request.namespace)
        ns_id = self.store.register_namespace(namespace)
        return store_pb2.RegisterNamespaceResponse(
            namespace_id=ns_id, block_bytes=namespace.block_bytes
        )

    @grpc_errors
    async def Put(
        self, requests: AsyncIterator[store_pb2.PutRequest | Data | Malformed], context: Context
    ) -> store_pb2.PutResponse:
        (result,) = await self._receive(requests, max_chains=1)
        return _put_response(result)

    @grpc_errors
    async def BatchPut(
        self, requests: AsyncIterator[store_pb2.PutRequest | Data | Malformed], context: Context
    ) -> store_pb2.BatchPutResponse:
        results = await self._receive(requests, max_chains=None)
        return store_pb2.BatchPutResponse(results=[_put_response(r) for r in results])

    @grpc_errors
    async def Get(
        self, request: store_pb2.GetRequest, context: Context
    ) -> AsyncIterator[store_pb2.GetResponse | bytes]:
        ns_id = codec.decode_namespace_id(request.namespace_id)
        keys = codec.decode_keys(request.keys)
        async for message in self._send(0, ns_id, keys, request.local_only):
            yield message

    @grpc_errors
    async def BatchGet(
        self, request: store_pb2.BatchGetRequest, context: Context
    ) -> AsyncIterator[store_pb2.GetResponse | bytes]:
        ns_id = codec.decode_namespace_id(request.namespace_id)
        num_keys = sum(len(kl.keys) for kl in request.lists)
        if num_keys > MAX_KEYS_PER_REQUEST:
            raise InvalidArgument(f"lists: {num_keys} keys in all; at most {MAX_KEYS_PER_REQUEST}")
        lists = [
            codec.decode_keys(kl.keys, f"lists[{i}].keys") for i, kl in enumerate(request.lists)
        ]
        for i, keys in enumerate(lists):
            async for message in self._send(i, ns_id, keys, request.local_only):
                yield message

    @grpc_errors
    async def Lookup(
        self, request: store_pb2.LookupRequest, context: Context
    ) -> store_pb2.LookupResponse:
        ns_id = codec.decode_namespace_id(request.namespace_id)
        keys = codec.decode_keys(request.keys)
        self.store.namespace(ns_id)
        cluster = request.scope == store_pb2.LOOKUP_SCOPE_CLUSTER
        holders = await self.node.prefix_holders(ns_id, keys, cluster=cluster)
        local = self.store.lookup(ns_id, keys)
        return store_pb2.LookupResponse(
            nodes=[
                store_pb2.NodePrefix(
                    node_id=h.node_id,
                    address=h.address,
                    num_blocks=h.num_blocks,
                    tiers=[codec.tier_to_pb(t) for t in h.tiers],
                )
                for h in holders
            ],
            miss_reason=codec.reason_to_pb(local.miss_reason),
        )

    @grpc_errors
    async def Exists(
        self, request: store_pb2.KeysRequest, context: Context
    ) -> store_pb2.ExistsResponse:
        ns_id, keys = _decode_keys_request(request)
        return store_pb2.ExistsResponse(exists=self.store.exists(ns_id, keys))

    @grpc_errors
    async def Remove(
        self, request: store_pb2.KeysRequest, context: Context
    ) -> store_pb2.CountResponse:
        ns_id, keys = _decode_keys_request(request)
        return store_pb2.CountResponse(count=await self.store.remove(ns_id, keys))

    @grpc_errors
    async def Pin(self, request: store_pb2.PinRequest, context: Context) -> store_pb2.CountResponse:
        ns_id = codec.decode_namespace_id(request.namespace_id)
        keys = codec.decode_keys(request.keys)
        if request.ttl_s < 0 or request.ttl_s != request.ttl_s:
            raise InvalidArgument(
                f"ttl_s: must be positive (or 0 for the default), got {request.ttl_s}"
            )
        return store_pb2.CountResponse(count=self.store.pin(ns_id, keys, request.ttl_s or None))

    @grpc_errors
    async def Unpin(
        self, request: store_pb2.KeysRequest, context: Context
    ) -> store_pb2.CountResponse:
        ns_id, keys = _decode_keys_request(request)
        return store_pb2.CountResponse(count=self.store.unpin(ns_id, keys))

    @grpc_errors
    async def DataPlane(
        self, request: store_pb2.DataPlaneRequest, context: Context
    ) -> store_pb2.DataPlaneResponse:
        plane = self.node.data_plane
        config = self.node.config
        return store_pb2.DataPlaneResponse(
            node_id=self.node.node_id,
            host_id=self.node.host_id,
            addresses=plane.addresses if plane is not None else [],
            tls=config.transfer.tls,
            peer_fetch=config.server.peer_fetch and config.metadata.backend.value != "memory",
        )

    # -- streaming ----------------------------------------------------------------------

    async def _receive(
        self,
        requests: AsyncIterator[store_pb2.PutRequest | Data | Malformed],
        max_chains: int | None,
    ) -> list[PutResult]:
        results: list[PutResult] = []
        current: _IncomingChain | None = None
        try:
            async for message in requests:
                if isinstance(message, Malformed):
                    raise InvalidArgument(message.reason)
                if isinstance(message, Data):
                    if current is None:
                        raise InvalidArgument("data: sent before a header")
                    current.assembler.feed(message.data)
                    continue
                part = message.WhichOneof("part")
                if part == "header":
                    if current is not None:
                        results.append(await current.commit())
                        current = None
                    if max_chains is not None and len(results) >= max_chains:
                        raise InvalidArgument("header: Put takes one chain; use BatchPut for more")
                    current = await self._open_chain(message.header)
                elif part == "data":
                    if current is None:
                        raise InvalidArgument("data: sent before a header")
                    current.assembler.feed(message.data)
                else:
                    raise InvalidArgument("part: a message must carry a header or data")
            if current is not None:
                results.append(await current.commit())
                current = None
        except Exception:
            await _drain(requests)
            raise
        finally:
            if current is not None:
                await self.store.abort(current.reservation)
        if not results:
            raise InvalidArgument("header: a put must start with a header")
        return results

    async def _open_chain(self, header: store_pb2.PutHeader) -> _IncomingChain:
        ns_id = codec.decode_namespace_id(header.namespace_id)
        keys = codec.decode_keys(header.keys)
        parent = codec.decode_optional_key(header.parent, "parent")
        namespace = self.store.namespace(ns_id)
        reservation = await self.store.reserve(ns_id, keys, [parent, *keys[:-1]] if keys else [])
        dsts: list[memoryview | None] = [None] * len(keys)
        for block in reservation.blocks:
            dsts[block.position] = block.buffer
        return _IncomingChain(self, reservation, BlockAssembler(dsts, namespace.block_bytes))

    async def _send(
        self, list_index: int, ns_id: NamespaceId, keys: Sequence[BlockKey], local_only: bool
    ) -> AsyncIterator[store_pb2.GetResponse | bytes]:
        namespace = self.store.namespace(ns_id)
        # a run that may go on at a peer counts its misses once, after the peer answered
        async with self.store.read(ns_id, keys, count_misses=local_only) as run:
            views, reason = run.blocks, run.miss_reason
            remote = None
            if len(views) < len(keys) and not local_only:
                remote = await self.node.fetch_from_peers(namespace, keys, len(views))
            blocks = [v.data for v in views] + (remote.blocks if remote else [])
            if not local_only:
                num_peer = len(remote.blocks) if remote else 0
                self.store.record_peer_read(ns_id, num_peer, len(keys) - len(blocks), reason)
            header = store_pb2.GetHeader(
                list_index=list_index,
                num_hits=len(blocks),
                tiers=[codec.tier_to_pb(v.tier) for v in views]
                + [codec.tier_to_pb(t) for t in (remote.tiers if remote else [])],
                checksums=[v.checksum for v in views]
                + [checksum(b) for b in (remote.blocks if remote else [])],
                block_bytes=namespace.block_bytes,
                miss_reason=codec.reason_to_pb(None if len(blocks) == len(keys) else reason),
                node_ids=[self.node.node_id] * len(views)
                + ([remote.node_id] * len(remote.blocks) if remote else []),
            )
            yield store_pb2.GetResponse(header=header)
            for piece in chunks(blocks, self.chunk_bytes):
                yield encode_data(piece)  # pre-framed: one copy, no protobuf


class _IncomingChain:
    def __init__(
        self, servicer: StoreServicer, reservation: Reservation, assembler: BlockAssembler
    ) -> None:
        self.servicer = servicer
        self.reservation = reservation
        self.assembler = assembler

    async def commit(self) -> PutResult:
        self.assembler.check_complete()
        return await self.servicer.store.commit(self.reservation)


DRAIN_LIMIT_BYTES = 256 << 20


async def _drain(requests: AsyncIterator[store_pb2.PutRequest | Data | Malformed]) -> None:
    """Read what the client is still sending before failing its put.

    A grpc.aio client that is still writing when the server's status arrives can report
    INTERNAL ("Internal error from Core") instead of that status (grpc/grpc#36066), so
    the client would see a wrong error. Reading the rest first (up to a limit; the
    call's deadline bounds the time) lets the real status reach it.
    """
    drained = 0
    async for message in requests:
        if isinstance(message, Malformed):
            continue
        drained += len(message.data) if isinstance(message, Data) else message.ByteSize()
        if drained > DRAIN_LIMIT_BYTES:
            return


def _decode_keys_request(request: store_pb2.KeysRequest) -> tuple[NamespaceId, list[BlockKey]]:
    return codec.decode_namespace_id(request.namespace_id), codec.decode_keys(request.keys)


def _put_response(result: PutResult) -> store_pb2.PutResponse:
    return store_pb2.PutResponse(
        num_stored=result.num_stored,
        num_present=result.num_present,
        num_in_flight=result.num_in_flight,
        num_skipped=result.num_skipped,
    )


def add_to_server(servicer: StoreServicer, server: grpc.aio.Server) -> None:
    """Register the servicer; Put, BatchPut, Get and BatchGet use ``wire`` framing."""

    def unary(name: str, request: Any, response: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )

    pb = store_pb2
    handlers = {
        "RegisterNamespace": unary(
            "RegisterNamespace", pb.RegisterNamespaceRequest, pb.RegisterNamespaceResponse
        ),
        "Lookup": unary("Lookup", pb.LookupRequest, pb.LookupResponse),
        "Exists": unary("Exists", pb.KeysRequest, pb.ExistsResponse),
        "Remove": unary("Remove", pb.KeysRequest, pb.CountResponse),
        "Pin": unary("Pin", pb.PinRequest, pb.CountResponse),
        "Unpin": unary("Unpin", pb.KeysRequest, pb.CountResponse),
        "DataPlane": unary("DataPlane", pb.DataPlaneRequest, pb.DataPlaneResponse),
        "Put": grpc.stream_unary_rpc_method_handler(
            servicer.Put,
            request_deserializer=parse_put_request,
            response_serializer=pb.PutResponse.SerializeToString,
        ),
        "BatchPut": grpc.stream_unary_rpc_method_handler(
            servicer.BatchPut,
            request_deserializer=parse_put_request,
            response_serializer=pb.BatchPutResponse.SerializeToString,
        ),
        "Get": grpc.unary_stream_rpc_method_handler(
            servicer.Get,
            request_deserializer=pb.GetRequest.FromString,
            response_serializer=serialize,
        ),
        "BatchGet": grpc.unary_stream_rpc_method_handler(
            servicer.BatchGet,
            request_deserializer=pb.BatchGetRequest.FromString,
            response_serializer=serialize,
        ),
    }
    service = pb.DESCRIPTOR.services_by_name["StoreService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
