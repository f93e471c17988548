from kvstore._proto.strata.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListPinsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PinnedBlock(_message.Message):
    __slots__ = ("namespace_id", "model_id", "key", "tier", "ttl_s", "parent")
    NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    namespace_id: bytes
    model_id: str
    key: bytes
    tier: _common_pb2.Tier
    ttl_s: float
    parent: bytes
    def __init__(self, namespace_id: _Optional[bytes] = ..., model_id: _Optional[str] = ..., key: _Optional[bytes] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., ttl_s: _Optional[float] = ..., parent: _Optional[bytes] = ...) -> None: ...

class ListPinsResponse(_message.Message):
    __slots__ = ("blocks",)
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    blocks: _containers.RepeatedCompositeFieldContainer[PinnedBlock]
    def __init__(self, blocks: _Optional[_Iterable[_Union[PinnedBlock, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierStats(_message.Message):
    __slots__ = ("tier", "capacity_bytes", "used_bytes", "num_blocks", "hit_blocks", "evicted_blocks", "corrupted_blocks")
    TIER_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    HIT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    EVICTED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    CORRUPTED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.Tier
    capacity_bytes: int
    used_bytes: int
    num_blocks: int
    hit_blocks: int
    evicted_blocks: int
    corrupted_blocks: int
    def __init__(self, tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., num_blocks: _Optional[int] = ..., hit_blocks: _Optional[int] = ..., evicted_blocks: _Optional[int] = ..., corrupted_blocks: _Optional[int] = ...) -> None: ...

class TierCount(_message.Message):
    __slots__ = ("tier", "blocks", "tokens")
    TIER_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.Tier
    blocks: int
    tokens: int
    def __init__(self, tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., blocks: _Optional[int] = ..., tokens: _Optional[int] = ...) -> None: ...

class ReasonCount(_message.Message):
    __slots__ = ("reason", "blocks", "tokens")
    REASON_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    reason: _common_pb2.MissReason
    blocks: int
    tokens: int
    def __init__(self, reason: _Optional[_Union[_common_pb2.MissReason, str]] = ..., blocks: _Optional[int] = ..., tokens: _Optional[int] = ...) -> None: ...

class NamespaceStats(_message.Message):
    __slots__ = ("namespace_id", "namespace", "hits", "misses", "peer_hit_blocks", "peer_hit_tokens")
    NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    PEER_HIT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PEER_HIT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    namespace_id: bytes
    namespace: _common_pb2.Namespace
    hits: _containers.RepeatedCompositeFieldContainer[TierCount]
    misses: _containers.RepeatedCompositeFieldContainer[ReasonCount]
    peer_hit_blocks: int
    peer_hit_tokens: int
    def __init__(self, namespace_id: _Optional[bytes] = ..., namespace: _Optional[_Union[_common_pb2.Namespace, _Mapping]] = ..., hits: _Optional[_Iterable[_Union[TierCount, _Mapping]]] = ..., misses: _Optional[_Iterable[_Union[ReasonCount, _Mapping]]] = ..., peer_hit_blocks: _Optional[int] = ..., peer_hit_tokens: _Optional[int] = ...) -> None: ...

class Move(_message.Message):
    __slots__ = ("source", "target", "blocks")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    source: _common_pb2.Tier
    target: _common_pb2.Tier
    blocks: int
    def __init__(self, source: _Optional[_Union[_common_pb2.Tier, str]] = ..., target: _Optional[_Union[_common_pb2.Tier, str]] = ..., blocks: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("node_id", "tiers", "namespaces", "demotions", "promotions", "torn_writes", "reservations_reclaimed", "put_blocks", "degraded", "peer_fetched_blocks", "since_s", "pinned_blocks", "put_slow_blocks", "put_skipped_blocks", "open_reservations", "read_pins")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    DEMOTIONS_FIELD_NUMBER: _ClassVar[int]
    PROMOTIONS_FIELD_NUMBER: _ClassVar[int]
    TORN_WRITES_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_RECLAIMED_FIELD_NUMBER: _ClassVar[int]
    PUT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    PEER_FETCHED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SINCE_S_FIELD_NUMBER: _ClassVar[int]
    PINNED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PUT_SLOW_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PUT_SKIPPED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    OPEN_RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    READ_PINS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    tiers: _containers.RepeatedCompositeFieldContainer[TierStats]
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceStats]
    demotions: _containers.RepeatedCompositeFieldContainer[Move]
    promotions: _containers.RepeatedCompositeFieldContainer[Move]
    torn_writes: int
    reservations_reclaimed: int
    put_blocks: int
    degraded: bool
    peer_fetched_blocks: int
    since_s: float
    pinned_blocks: int
    put_slow_blocks: int
    put_skipped_blocks: int
    open_reservations: int
    read_pins: int
    def __init__(self, node_id: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[TierStats, _Mapping]]] = ..., namespaces: _Optional[_Iterable[_Union[NamespaceStats, _Mapping]]] = ..., demotions: _Optional[_Iterable[_Union[Move, _Mapping]]] = ..., promotions: _Optional[_Iterable[_Union[Move, _Mapping]]] = ..., torn_writes: _Optional[int] = ..., reservations_reclaimed: _Optional[int] = ..., put_blocks: _Optional[int] = ..., degraded: _Optional[bool] = ..., peer_fetched_blocks: _Optional[int] = ..., since_s: _Optional[float] = ..., pinned_blocks: _Optional[int] = ..., put_slow_blocks: _Optional[int] = ..., put_skipped_blocks: _Optional[int] = ..., open_reservations: _Optional[int] = ..., read_pins: _Optional[int] = ...) -> None: ...

class NodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierCapacity(_message.Message):
    __slots__ = ("tier", "capacity_bytes", "used_bytes")
    TIER_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.Tier
    capacity_bytes: int
    used_bytes: int
    def __init__(self, tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ...) -> None: ...

class Link(_message.Message):
    __slots__ = ("peer_id", "transport", "address", "gbps", "rtt_us")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GBPS_FIELD_NUMBER: _ClassVar[int]
    RTT_US_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    transport: str
    address: str
    gbps: float
    rtt_us: float
    def __init__(self, peer_id: _Optional[str] = ..., transport: _Optional[str] = ..., address: _Optional[str] = ..., gbps: _Optional[float] = ..., rtt_us: _Optional[float] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "address", "host_id", "tiers", "started_s", "heartbeat_s", "degraded", "data_addresses", "links")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    STARTED_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    host_id: str
    tiers: _containers.RepeatedCompositeFieldContainer[TierCapacity]
    started_s: float
    heartbeat_s: float
    degraded: bool
    data_addresses: _containers.RepeatedScalarFieldContainer[str]
    links: _containers.RepeatedCompositeFieldContainer[Link]
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., host_id: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[TierCapacity, _Mapping]]] = ..., started_s: _Optional[float] = ..., heartbeat_s: _Optional[float] = ..., degraded: _Optional[bool] = ..., data_addresses: _Optional[_Iterable[str]] = ..., links: _Optional[_Iterable[_Union[Link, _Mapping]]] = ...) -> None: ...

class NodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class EvictRequest(_message.Message):
    __slots__ = ("tier", "num_blocks")
    TIER_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.Tier
    num_blocks: int
    def __init__(self, tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., num_blocks: _Optional[int] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ("tier",)
    TIER_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.Tier
    def __init__(self, tier: _Optional[_Union[_common_pb2.Tier, str]] = ...) -> None: ...

class EvictResponse(_message.Message):
    __slots__ = ("num_blocks",)
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    num_blocks: int
    def __init__(self, num_blocks: _Optional[int] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetConfigResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class RemoveNamespaceRequest(_message.Message):
    __slots__ = ("namespace_id",)
    NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    namespace_id: bytes
    def __init__(self, namespace_id: _Optional[bytes] = ...) -> None: ...

class RemoveNamespaceResponse(_message.Message):
    __slots__ = ("num_blocks",)
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    num_blocks: int
    def __init__(self, num_blocks: _Optional[int] = ...) -> None: ...
