"""The MetadataService contract, run against every backend (see conftest's ``metadata``).

TTLs here are short (0.3 s) because the Redis backend really waits for them; the memory
backend moves its fake clock instead.
"""

from __future__ import annotations

import hashlib

import pytest

from kvstore.errors import InvalidArgument
from kvstore.metadata.base import IndexChange, MetadataService, NodeInfo, TierCapacity
from kvstore.metadata.memory import MemoryMetadata
from kvstore.metadata.redis import RedisMetadata
from kvstore.types import BlockKey, TierKind
from tests.kvstore.metadata.conftest import Elapse

HBM, DRAM, NVME = TierKind.HBM, TierKind.DRAM, TierKind.NVME
TTL_S = 0.3  # short: Redis really waits
LONG_TTL_S = 30.0

# Raw keys that would break a hex-free, separator-based key scheme if it were careless.
ODD_KEYS = [
    BlockKey(b"\x00" * 16),
    BlockKey(b":" * 16),
    BlockKey(b"\xff" * 16),
    BlockKey(b"\r\n" * 8),
    BlockKey(b"strata:node:ab\x00:"),
    BlockKey(b"*" * 15 + b"\x00"),
]


def key(i: int) -> BlockKey:
    return BlockKey(hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest())


def node(node_id: str, **fields: object) -> NodeInfo:
    return NodeInfo(node_id=node_id, address=f"{node_id}:7600", host_id="h1", **fields)  # type: ignore[arg-type]


Backend = MetadataService | MemoryMetadata | RedisMetadata


async def test_register_and_nodes_round_trip_every_field(metadata: MetadataService) -> None:
    full = NodeInfo(
        node_id="n-b",
        address="10.0.0.2:7600",
        host_id="host-2",
        tiers=(
            TierCapacity(HBM, 80 << 30, 1 << 30),
            TierCapacity(DRAM, 512 << 30, 12_345),
            TierCapacity(NVME, 8 << 40, 0),
        ),
        started_s=1_712_345_678.123456,
        heartbeat_s=1_712_345_999.000001,
        degraded=True,
        labels={"zone": "eu-1", "gpu": "h100", "note": "é ✓"},
    )
    bare = node("n-a")
    await metadata.register(full, LONG_TTL_S)
    await metadata.register(bare, LONG_TTL_S)
    assert await metadata.nodes() == [bare, full]  # sorted by node id


async def test_register_upserts_and_copies(metadata: MetadataService) -> None:
    labels = {"zone": "a"}
    await metadata.register(node("n1", labels=labels), LONG_TTL_S)
    labels["zone"] = "mutated after register"
    assert (await metadata.nodes())[0].labels == {"zone": "a"}
    await metadata.register(node("n1", degraded=True, heartbeat_s=2.5), LONG_TTL_S)
    assert await metadata.nodes() == [node("n1", degraded=True, heartbeat_s=2.5)]


async def test_register_rejects_bad_ttl(metadata: MetadataService) -> None:
    for ttl_s in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(InvalidArgument):
            await metadata.register(node("n1"), ttl_s)
    assert await metadata.nodes() == []


async def test_heartbeat_keeps_a_node_alive(metadata: MetadataService, elapse: Elapse) -> None:
    ttl_s = 0.4
    await metadata.register(node("n1"), ttl_s)
    for _ in range(3):  # 0.45 s in all, more than the TTL; 0.25 s to spare each time
        await elapse(0.15)
        assert [n.node_id for n in await metadata.nodes()] == ["n1"]
        await metadata.register(node("n1"), ttl_s)
    await elapse(ttl_s * 1.5)
    assert await metadata.nodes() == []


async def test_expired_node_leaves_nodes_and_locate(
    metadata: MetadataService, elapse: Elapse
) -> None:
    await metadata.register(node("lives"), LONG_TTL_S)
    await metadata.publish("dies", [IndexChange(key(1), DRAM), IndexChange(key(2), NVME)])
    await metadata.publish("lives", [IndexChange(key(1), HBM)])
    await metadata.register(node("dies"), TTL_S)  # just before the check: no flaky margin
    assert await metadata.locate([key(1), key(2)]) == [{"dies": DRAM, "lives": HBM}, {"dies": NVME}]
    await elapse(TTL_S * 1.5)
    assert [n.node_id for n in await metadata.nodes()] == ["lives"]
    assert await metadata.locate([key(1), key(2)]) == [{"lives": HBM}, {}]


async def test_publish_applies_add_move_remove_in_order(metadata: MetadataService) -> None:
    await metadata.register(node("n1"), LONG_TTL_S)
    await metadata.publish(
        "n1",
        [
            IndexChange(key(1), DRAM),
            IndexChange(key(2), NVME),
            IndexChange(key(1), HBM),  # moved up
            IndexChange(key(2), None),  # removed
            IndexChange(key(3), DRAM),
            IndexChange(key(3), None),  # added then removed in one batch
            IndexChange(key(4), None),  # removing what was never there is a no-op
            IndexChange(key(5), None),
            IndexChange(key(5), NVME),  # removed then added
        ],
    )
    assert await metadata.locate([key(i) for i in range(1, 6)]) == [
        {"n1": HBM},
        {},
        {},
        {},
        {"n1": NVME},
    ]
    await metadata.publish("n1", [IndexChange(key(1), NVME), IndexChange(key(5), None)])
    await metadata.publish("n1", [])
    assert await metadata.locate([key(1), key(5)]) == [{"n1": NVME}, {}]


async def test_publish_rejects_bad_keys_and_applies_nothing(metadata: MetadataService) -> None:
    await metadata.register(node("n1"), LONG_TTL_S)
    bad = [IndexChange(key(1), DRAM), IndexChange(BlockKey(b"short"), DRAM)]
    with pytest.raises(InvalidArgument):
        await metadata.publish("n1", bad)
    with pytest.raises(InvalidArgument):
        await metadata.locate([key(1), BlockKey(b"x" * 17)])
    assert await metadata.locate([key(1)]) == [{}]


async def test_locate_many_keys_over_several_nodes_and_tiers(metadata: MetadataService) -> None:
    num_keys, node_ids = 10_000, ["n0", "n1", "n2"]
    tiers = (HBM, DRAM, NVME)
    expected: list[dict[str, TierKind]] = [{} for _ in range(num_keys)]
    for n, node_id in enumerate(node_ids):
        await metadata.register(node(node_id), LONG_TTL_S)
        changes = []
        for i in range(num_keys):
            if (i + n) % 4:  # each node holds 3 keys in 4, each key 1 to 3 nodes
                tier = tiers[(i * 7 + n) % 3]
                changes.append(IndexChange(key(i), tier))
                expected[i][node_id] = tier
        await metadata.publish(node_id, changes)
    keys = [key(i) for i in range(num_keys)]
    assert await metadata.locate(keys) == expected
    assert await metadata.locate([key(num_keys + 1), *keys[:3]]) == [{}, *expected[:3]]
    assert await metadata.locate([]) == []


async def test_replace_index_drops_the_old_entries(metadata: MetadataService) -> None:
    await metadata.register(node("n1"), LONG_TTL_S)
    await metadata.register(node("n2"), LONG_TTL_S)
    await metadata.publish("n1", [IndexChange(key(i), DRAM) for i in range(5)])
    await metadata.publish("n2", [IndexChange(key(0), HBM)])
    entries = ((k, t) for k, t in [(key(3), NVME), (key(6), HBM), (key(7), DRAM), (key(6), DRAM)])
    await metadata.replace_index("n1", entries)  # any iterable; the last tier of a key wins
    keys = [key(i) for i in range(8)]
    assert await metadata.locate(keys) == [
        {"n2": HBM},
        {},
        {},
        {"n1": NVME},
        {},
        {},
        {"n1": DRAM},
        {"n1": DRAM},
    ]
    await metadata.replace_index("n1", [])
    assert await metadata.locate(keys) == [{"n2": HBM}, *([{}] * 7)]


async def test_replace_index_rejects_bad_keys_and_keeps_the_old_index(
    metadata: MetadataService,
) -> None:
    await metadata.register(node("n1"), LONG_TTL_S)
    await metadata.publish("n1", [IndexChange(key(1), DRAM)])
    with pytest.raises(InvalidArgument):
        await metadata.replace_index("n1", [(key(2), DRAM), (BlockKey(b""), DRAM)])
    assert await metadata.locate([key(1), key(2)]) == [{"n1": DRAM}, {}]


async def test_unregister_removes_the_node_and_all_its_entries(metadata: MetadataService) -> None:
    await metadata.register(node("n1"), LONG_TTL_S)
    await metadata.register(node("n2"), LONG_TTL_S)
    await metadata.publish("n1", [IndexChange(key(i), DRAM) for i in range(100)])
    await metadata.publish("n2", [IndexChange(key(0), NVME)])
    await metadata.unregister("n1")
    await metadata.unregister("never-registered")
    assert [n.node_id for n in await metadata.nodes()] == ["n2"]
    assert await metadata.locate([key(0), key(1)]) == [{"n2": NVME}, {}]
    # Removed, not merely hidden: coming back does not bring the entries back.
    await metadata.register(node("n1"), LONG_TTL_S)
    assert await metadata.locate([key(0), key(1)]) == [{"n2": NVME}, {}]


async def test_raw_keys_of_any_bytes(metadata: MetadataService) -> None:
    await metadata.register(node("n1"), LONG_TTL_S)
    await metadata.register(node("n2"), LONG_TTL_S)
    await metadata.publish("n1", [IndexChange(k, DRAM) for k in ODD_KEYS])
    await metadata.publish("n2", [IndexChange(ODD_KEYS[0], HBM)])
    assert await metadata.locate(ODD_KEYS) == [{"n1": DRAM, "n2": HBM}] + [{"n1": DRAM}] * 5
    await metadata.publish("n1", [IndexChange(ODD_KEYS[1], None)])
    await metadata.replace_index("n1", [(ODD_KEYS[2], NVME)])
    assert await metadata.locate(ODD_KEYS[:3]) == [{"n2": HBM}, {}, {"n1": NVME}]
    await metadata.unregister("n2")
    assert await metadata.locate(ODD_KEYS[:3]) == [{}, {}, {"n1": NVME}]


async def test_reap_dead_forgets_dead_nodes_within_its_budget(
    metadata: Backend, elapse: Elapse
) -> None:
    """Not in the Protocol, but both backends offer it: the garbage collector."""
    assert isinstance(metadata, MemoryMetadata | RedisMetadata)
    await metadata.register(node("lives"), LONG_TTL_S)
    await metadata.publish("dies", [IndexChange(key(i), DRAM) for i in range(25)])
    await metadata.publish("lives", [IndexChange(key(0), HBM)])
    await metadata.register(node("dies"), TTL_S)
    assert not await metadata.reap_dead()  # nobody is dead yet
    await elapse(TTL_S * 1.5)
    rounds = 1
    while await metadata.reap_dead(max_entries=10):
        rounds += 1
    assert rounds == 3
    await metadata.register(node("dies"), LONG_TTL_S)  # back, but its entries are gone
    assert await metadata.locate([key(0), key(1)]) == [{"lives": HBM}, {}]


async def test_register_says_whether_the_node_was_live(
    metadata: MetadataService, elapse: Elapse
) -> None:
    assert await metadata.register(node("n1"), TTL_S) is False  # new
    assert await metadata.register(node("n1"), TTL_S) is True  # a heartbeat
    await elapse(TTL_S * 2)
    assert await metadata.register(node("n1"), TTL_S) is False  # it had expired
