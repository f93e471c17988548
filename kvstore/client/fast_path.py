"""The client's fast path: bulk bytes over the node's data plane instead of gRPC.

On first use the client asks the node (gRPC ``DataPlane``) where its data plane listens
and connects with a transfer engine of its own: a node on the same host is read straight
out of its shared DRAM arena (one small round trip pins the blocks), any other over the
data plane's TCP, bytes landing in the caller's buffers. Puts go over the data plane
too, into the node's reserved slots. gRPC stays the control plane, and the fallback
when the data plane is off or fails (``kvstore.client.route`` chooses).
"""

from __future__ import annotations

import logging
import ssl

from kvstore._proto.strata.v1 import store_pb2
from kvstore.client.calls import CallOptions
from kvstore.transfer.connection import local_host_id
from kvstore.transfer.engine import Peer, TransferEngine
from kvstore.transfer.transports import Transport, TransportKind

logger = logging.getLogger(__name__)


class DataPlaneLink:
    """The node's data plane as this client reaches it (``kvstore.client.route`` decides
    when to use it)."""

    def __init__(
        self, engine: TransferEngine, peer: Peer, info: store_pb2.DataPlaneResponse
    ) -> None:
        self.engine = engine
        self.peer = peer
        self.node_id = info.node_id
        self.peer_fetch = info.peer_fetch

    @property
    def kind(self) -> TransportKind:
        return self.peer.kind

    @property
    def transport(self) -> Transport:
        return self.peer.transport

    @classmethod
    async def open(cls, info: store_pb2.DataPlaneResponse, options: CallOptions) -> DataPlaneLink:
        context = None
        if info.tls:
            cafile = str(options.tls_ca_file) if options.tls_ca_file else None
            context = ssl.create_default_context(cafile=cafile)
        engine = TransferEngine(
            host_id=local_host_id(),
            token=options.token,
            ssl_context=context,
            timeout_s=options.timeout_s,
            stripes=options.data_stripes,
            threads=max(2, options.data_stripes),
            allow_shm=options.shared_memory,
        )
        try:
            peer = await engine.connect(list(info.addresses))
        except BaseException:
            await engine.close()
            raise
        logger.debug("data plane of %s reached by %s", info.node_id, peer.kind.value)
        return cls(engine, peer, info)

    async def close(self) -> None:
        await self.engine.close()
