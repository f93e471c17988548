"""Async client of one store node.

    async with StoreClient("127.0.0.1:7600") as client:
        ns = await client.register_namespace(namespace)
        await client.put(ns, keys, blocks)
        result = await client.get(ns, keys)        # a miss is num_hits == 0, not an error
        result.blocks[0]                           # bytes of the first hit

Gets verify every block's checksum as it arrives: a block whose bytes do not match ends
the hit run there, so wrong bytes are never returned. Failures raise the store's
exceptions (``kvstore.errors``) with the server's message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from kvstore import codec
from kvstore._proto.strata.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    store_pb2,
    store_pb2_grpc,
)
from kvstore.client.calls import CallOptions, call, open_channel
from kvstore.client.fast_path import DataPlaneLink
from kvstore.client.layered import LayeredGet, LayeredPut
from kvstore.client.results import GetResult
from kvstore.client.route import Route
from kvstore.errors import InvalidArgument
from kvstore.hashing import Namespace, checksum
from kvstore.metadata.base import NodeInfo
from kvstore.reservations import PutResult
from kvstore.streams import BlockAssembler, chunks
from kvstore.types import BlockKey, Buffer, MissReason, NamespaceId, TierKind
from kvstore.validation import readable, writable
from kvstore.wire import Data, encode_data, parse_get_response, serialize

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Chain:
    """Blocks to store: ``keys[0]``'s parent is ``parent``, then each key the next's."""

    keys: Sequence[BlockKey]
    blocks: Sequence[Buffer]
    parent: BlockKey | None = None


@dataclass(frozen=True, slots=True)
class NodePrefix:
    node_id: str
    address: str
    num_blocks: int
    tiers: list[TierKind]


class StoreClient:
    def __init__(self, address: str, options: CallOptions | None = None, **kwargs: Any) -> None:
        """Connect (lazily) to ``address``; ``kwargs`` are ``CallOptions`` fields."""
        self.address = address
        self.options = options or CallOptions(**kwargs)
        self._channel = open_channel(address, self.options)
        self._store = store_pb2_grpc.StoreServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        service = "/strata.v1.StoreService/"
        framed = {"request_serializer": serialize}
        self._put_call = self._channel.stream_unary(
            service + "Put", **framed, response_deserializer=store_pb2.PutResponse.FromString
        )
        self._batch_put_call = self._channel.stream_unary(
            service + "BatchPut",
            **framed,
            response_deserializer=store_pb2.BatchPutResponse.FromString,
        )
        self._get_call = self._channel.unary_stream(
            service + "Get",
            request_serializer=store_pb2.GetRequest.SerializeToString,
            response_deserializer=parse_get_response,
        )
        self._batch_get_call = self._channel.unary_stream(
            service + "BatchGet",
            request_serializer=store_pb2.BatchGetRequest.SerializeToString,
            response_deserializer=parse_get_response,
        )
        self._block_bytes: dict[NamespaceId, int] = {}
        self._route = Route(
            address,
            self.options,
            block_bytes=self._block_bytes,
            describe=self._describe_data_plane,
            grpc_put=self._put_chain,
            grpc_get=self._get_grpc,
        )

    async def close(self) -> None:
        await self._route.close()
        await self._channel.close()

    async def data_plane(self) -> DataPlaneLink | None:
        """The node's data plane as this client reaches it (None: gRPC only)."""
        return await self._route.data_plane()

    async def _describe_data_plane(self) -> store_pb2.DataPlaneResponse:
        response: store_pb2.DataPlaneResponse = await self._unary(
            "DataPlane", self._store.DataPlane, store_pb2.DataPlaneRequest()
        )
        return response

    async def __aenter__(self) -> StoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- store ----------------------------------------------------------------------

    async def register_namespace(self, namespace: Namespace) -> NamespaceId:
        request = store_pb2.RegisterNamespaceRequest(namespace=codec.namespace_to_pb(namespace))
        response = await self._unary("RegisterNamespace", self._store.RegisterNamespace, request)
        ns_id = NamespaceId(response.namespace_id)
        self._block_bytes[ns_id] = response.block_bytes
        return ns_id

    async def put(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        blocks: Sequence[Buffer],
        parent: BlockKey | None = None,
    ) -> PutResult:
        """Store one chain of blocks (each exactly the namespace's block size)."""
        return await self._route.put(ns_id, keys, blocks, parent)

    async def _put_chain(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        blocks: Sequence[Buffer],
        parent: BlockKey | None,
    ) -> PutResult:
        (result,) = await self._put("Put", ns_id, [Chain(keys, blocks, parent)])
        return result

    async def put_layered(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        blocks: Sequence[memoryview],
        num_layers: int,
        parent: BlockKey | None = None,
    ) -> LayeredPut:
        """A put whose layers go out one by one as they are written (``kvstore.client.layered``);
        ``blocks`` must stay untouched until ``commit`` returns."""
        return await LayeredPut(self._route, ns_id, keys, blocks, num_layers, parent=parent).open()

    async def get_layered(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        dsts: Sequence[memoryview],
        num_layers: int,
    ) -> LayeredGet:
        """A get whose hits land layer by layer in ``dsts`` (``kvstore.client.layered``)."""
        return await LayeredGet.start(self._route, ns_id, keys, dsts, num_layers)

    async def put_many(self, ns_id: NamespaceId, chains: Sequence[Chain]) -> list[PutResult]:
        """Store several chains in one call."""
        return await self._put("BatchPut", ns_id, chains)

    async def get(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        buffers: Sequence[Buffer] | None = None,
        *,
        local_only: bool = False,
    ) -> GetResult:
        """The longest cached leading run of ``keys``; into ``buffers`` when given."""
        return await self._route.get(ns_id, keys, buffers, local_only=local_only)

    async def _get_grpc(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        buffers: Sequence[Buffer] | None,
        local_only: bool,
    ) -> GetResult:
        request = store_pb2.GetRequest(namespace_id=ns_id, keys=keys, local_only=local_only)
        dsts = None if buffers is None else [buffers]
        (result,) = await self._get("Get", self._get_call, request, dsts, 1)
        return result

    async def get_many(
        self,
        ns_id: NamespaceId,
        key_lists: Sequence[Sequence[BlockKey]],
        *,
        local_only: bool = False,
    ) -> list[GetResult]:
        """The longest cached leading run of each key list, in one call."""
        request = store_pb2.BatchGetRequest(
            namespace_id=ns_id,
            lists=[store_pb2.KeyList(keys=keys) for keys in key_lists],
            local_only=local_only,
        )
        return await self._get("BatchGet", self._batch_get_call, request, None, len(key_lists))

    async def lookup(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], *, local: bool = False
    ) -> list[NodePrefix]:
        """How long a prefix of ``keys`` each node holds (longest first), and where."""
        scope = store_pb2.LOOKUP_SCOPE_LOCAL if local else store_pb2.LOOKUP_SCOPE_CLUSTER
        request = store_pb2.LookupRequest(namespace_id=ns_id, keys=keys, scope=scope)
        response = await self._unary("Lookup", self._store.Lookup, request)
        return [
            NodePrefix(n.node_id, n.address, n.num_blocks, [codec.tier_from_pb(t) for t in n.tiers])
            for n in response.nodes
        ]

    async def exists(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> list[bool]:
        request = store_pb2.KeysRequest(namespace_id=ns_id, keys=keys)
        return list((await self._unary("Exists", self._store.Exists, request)).exists)

    async def remove(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> int:
        request = store_pb2.KeysRequest(namespace_id=ns_id, keys=keys)
        return int((await self._unary("Remove", self._store.Remove, request)).count)

    async def pin(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], ttl_s: float | None = None
    ) -> int:
        request = store_pb2.PinRequest(namespace_id=ns_id, keys=keys, ttl_s=ttl_s or 0.0)
        return int((await self._unary("Pin", self._store.Pin, request)).count)

    async def unpin(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> int:
        request = store_pb2.KeysRequest(namespace_id=ns_id, keys=keys)
        return int((await self._unary("Unpin", self._store.Unpin, request)).count)

    # -- admin ----------------------------------------------------------------------

    async def stats(self) -> admin_pb2.StatsResponse:
        response: admin_pb2.StatsResponse = await self._unary(
            "Stats", self._admin.Stats, admin_pb2.StatsRequest()
        )
        return response

    async def reset_stats(self) -> admin_pb2.StatsResponse:
        """Zero the node's counters (admin right); returns the statistics just before."""
        response: admin_pb2.StatsResponse = await self._unary(
            "ResetStats", self._admin.ResetStats, admin_pb2.ResetStatsRequest(), idempotent=False
        )
        return response

    async def pins(self) -> admin_pb2.ListPinsResponse:
        """The node's pinned blocks (admin right)."""
        response: admin_pb2.ListPinsResponse = await self._unary(
            "ListPins", self._admin.ListPins, admin_pb2.ListPinsRequest()
        )
        return response

    async def nodes(self) -> list[NodeInfo]:
        response = await self._unary("Nodes", self._admin.Nodes, admin_pb2.NodesRequest())
        return [codec.node_from_pb(node) for node in response.nodes]

    async def evict(self, tier: TierKind, num_blocks: int) -> int:
        request = admin_pb2.EvictRequest(tier=codec.tier_to_pb(tier), num_blocks=num_blocks)
        response = await self._unary("Evict", self._admin.Evict, request, idempotent=False)
        return int(response.num_blocks)

    async def flush(self, tier: TierKind | None = None) -> int:
        pb_tier = codec.tier_to_pb(tier) if tier is not None else common_pb2.TIER_UNSPECIFIED
        request = admin_pb2.FlushRequest(tier=pb_tier)
        response = await self._unary("Flush", self._admin.Flush, request, idempotent=False)
        return int(response.num_blocks)

    async def remove_namespace(self, ns_id: NamespaceId) -> int:
        """Remove a namespace and its blocks from the node; returns how many blocks."""
        request = admin_pb2.RemoveNamespaceRequest(namespace_id=ns_id)
        response = await self._unary("RemoveNamespace", self._admin.RemoveNamespace, request)
        return int(response.num_blocks)

    async def config(self) -> dict[str, Any]:
        response = await self._unary(
            "GetConfig", self._admin.GetConfig, admin_pb2.GetConfigRequest()
        )
        values: dict[str, Any] = json.loads(response.json)
        return values

    # -- internals --------------------------------------------------------------------

    async def _unary(self, what: str, method: Any, request: Any, *, idempotent: bool = True) -> Any:
        metadata = self.options.metadata()

        async def attempt(timeout_s: float) -> Any:
            return await method(request, timeout=timeout_s, metadata=metadata)

        return await call(f"{what} on {self.address}", attempt, self.options, idempotent=idempotent)

    async def _put(self, what: str, ns_id: NamespaceId, chains: Sequence[Chain]) -> list[PutResult]:
        block_bytes = self._block_bytes.get(ns_id)
        if block_bytes is None:
            raise InvalidArgument("register the namespace with this client before putting")
        views = [[readable(b, block_bytes, i) for i, b in enumerate(c.blocks)] for c in chains]
        for chain, blocks in zip(chains, views, strict=True):
            if len(blocks) != len(chain.keys):
                raise InvalidArgument(f"{len(chain.keys)} keys but {len(blocks)} blocks")
        method = self._put_call if what == "Put" else self._batch_put_call
        metadata = self.options.metadata()

        async def messages() -> AsyncIterator[store_pb2.PutRequest | bytes]:
            for chain, blocks in zip(chains, views, strict=True):
                header = store_pb2.PutHeader(
                    namespace_id=ns_id, keys=chain.keys, parent=chain.parent or b""
                )
                yield store_pb2.PutRequest(header=header)
                for piece in chunks(blocks, self.options.chunk_bytes):
                    yield encode_data(piece)

        async def attempt(timeout_s: float) -> list[PutResult]:
            response: Any = await method(messages(), timeout=timeout_s, metadata=metadata)
            results = [response] if what == "Put" else list(response.results)
            return [
                PutResult(r.num_stored, r.num_present, r.num_in_flight, r.num_skipped)
                for r in results
            ]

        return await call(f"{what} on {self.address}", attempt, self.options, idempotent=True)

    async def _get(
        self,
        what: str,
        method: Any,
        request: Any,
        dsts: list[Sequence[Buffer]] | None,
        num_lists: int,
    ) -> list[GetResult]:
        metadata = self.options.metadata()

        async def attempt(timeout_s: float) -> list[GetResult]:
            results: list[GetResult] = []
            receiver: _ListReceiver | None = None
            async for message in method(request, timeout=timeout_s, metadata=metadata):
                if isinstance(message, Data):
                    if receiver is None:
                        raise InvalidArgument(f"{what}: data before a header")
                    receiver.assembler.feed(message.data)
                elif message.WhichOneof("part") == "header":
                    if receiver is not None:
                        results.append(receiver.finish())
                    buffers = dsts[len(results)] if dsts is not None else None
                    receiver = _ListReceiver(message.header, buffers)
            if receiver is not None:
                results.append(receiver.finish())
            if len(results) != num_lists:
                raise InvalidArgument(f"{what}: {len(results)} answers for {num_lists} key lists")
            return results

        return await call(f"{what} on {self.address}", attempt, self.options, idempotent=True)


class _ListReceiver:
    """Assembles one key list's hit blocks and checks their checksums."""

    def __init__(self, header: store_pb2.GetHeader, buffers: Sequence[Buffer] | None) -> None:
        self.header = header
        size, count = header.block_bytes, header.num_hits
        if buffers is None:
            arena = memoryview(bytearray(size * count))
            self.blocks = [arena[i * size : (i + 1) * size] for i in range(count)]
        else:
            if len(buffers) < count:
                raise InvalidArgument(f"{count} blocks hit but only {len(buffers)} buffers given")
            self.blocks = [writable(b, size, i)[:size] for i, b in enumerate(buffers[:count])]
        self.assembler = BlockAssembler(list(self.blocks), size)

    def finish(self) -> GetResult:
        self.assembler.check_complete()
        header = self.header
        good = len(self.blocks)
        for i, block in enumerate(self.blocks):
            if checksum(block) != header.checksums[i]:
                logger.warning("block %d arrived with a bad checksum; dropping the rest", i)
                good = i
                break
        reason = codec.reason_from_pb(header.miss_reason)
        if good < len(self.blocks):
            reason = MissReason.CORRUPTED
        return GetResult(
            num_hits=good,
            blocks=self.blocks[:good],
            tiers=[codec.tier_from_pb(t) for t in header.tiers[:good]],
            node_ids=list(header.node_ids[:good]),
            miss_reason=reason,
        )
