"""The AdminService servicer: statistics, nodes, eviction, effective config, namespace
removal."""

from __future__ import annotations

import json

import grpc

from kvstore import codec
from kvstore._proto.strata.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from kvstore.errors import InvalidArgument
from kvstore.server.errors import grpc_errors
from kvstore.server.node import StoreNode
from kvstore.types import TIERS_FASTEST_FIRST

Context = grpc.aio.ServicerContext


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, node: StoreNode) -> None:
        self.node = node
        self.store = node.store

    @grpc_errors
    async def Stats(
        self, request: admin_pb2.StatsRequest, context: Context
    ) -> admin_pb2.StatsResponse:
        return self._stats()

    @grpc_errors
    async def ResetStats(
        self, request: admin_pb2.ResetStatsRequest, context: Context
    ) -> admin_pb2.StatsResponse:
        before = self._stats()
        self.store.reset_stats()
        self.node.num_peer_blocks = 0
        return before

    @grpc_errors
    async def ListPins(
        self, request: admin_pb2.ListPinsRequest, context: Context
    ) -> admin_pb2.ListPinsResponse:
        model_ids = {ns.id: ns.model_id for ns in self.store.namespaces()}
        response = admin_pb2.ListPinsResponse()
        for pin in self.store.pins():
            meta = pin.meta
            response.blocks.add(
                namespace_id=meta.namespace_id,
                model_id=model_ids.get(meta.namespace_id, ""),
                key=meta.key,
                tier=codec.tier_to_pb(meta.tier),
                ttl_s=pin.ttl_s,
                parent=meta.parent or b"",
            )
        return response

    def _stats(self) -> admin_pb2.StatsResponse:
        response = codec.stats_to_pb(self.node.node_id, self.store.stats(), self.store.namespaces())
        response.degraded = self.node.degraded
        response.peer_fetched_blocks = self.node.num_peer_blocks
        return response

    @grpc_errors
    async def Nodes(
        self, request: admin_pb2.NodesRequest, context: Context
    ) -> admin_pb2.NodesResponse:
        return admin_pb2.NodesResponse(nodes=[codec.node_to_pb(n) for n in await self.node.nodes()])

    @grpc_errors
    async def Evict(
        self, request: admin_pb2.EvictRequest, context: Context
    ) -> admin_pb2.EvictResponse:
        tier = codec.tier_from_pb(request.tier)
        if request.num_blocks == 0:
            raise InvalidArgument("num_blocks: must be positive")
        return admin_pb2.EvictResponse(num_blocks=await self.store.evict(tier, request.num_blocks))

    @grpc_errors
    async def Flush(
        self, request: admin_pb2.FlushRequest, context: Context
    ) -> admin_pb2.EvictResponse:
        if request.tier == common_pb2.TIER_UNSPECIFIED:
            tiers = [t for t in TIERS_FASTEST_FIRST if t in self.store.tiering.tiers]
        else:
            tiers = [codec.tier_from_pb(request.tier)]
        moved = 0
        for tier in tiers:  # each round is bounded; repeat while blocks still leave
            while (
                left := await self.store.evict(tier, max(1, self.store.index.num_blocks(tier)))
            ) > 0:
                moved += left
        return admin_pb2.EvictResponse(num_blocks=moved)

    @grpc_errors
    async def GetConfig(
        self, request: admin_pb2.GetConfigRequest, context: Context
    ) -> admin_pb2.GetConfigResponse:
        return admin_pb2.GetConfigResponse(json=json.dumps(self.node.config.redacted()))

    @grpc_errors
    async def RemoveNamespace(
        self, request: admin_pb2.RemoveNamespaceRequest, context: Context
    ) -> admin_pb2.RemoveNamespaceResponse:
        ns_id = codec.decode_namespace_id(request.namespace_id)
        num_blocks = await self.store.remove_namespace(ns_id)
        return admin_pb2.RemoveNamespaceResponse(num_blocks=num_blocks)
