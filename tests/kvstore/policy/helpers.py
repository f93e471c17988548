"""A tiny driver for exact-order policy tests: an index with one DRAM tier."""

from kvstore.index import BlockIndex, BlockMeta
from kvstore.policy.candidates import EvictionPolicy
from kvstore.types import BlockKey, MissReason, NamespaceId, SlotId, TierKind

NS = NamespaceId(b"n" * 16)
DRAM = TierKind.DRAM


def key(name: str) -> BlockKey:
    return BlockKey(name.encode().ljust(16, b"."))


def name(k: BlockKey) -> str:
    return k.rstrip(b".").decode()


class Driver:
    """Insert, hit and evict blocks by name through a real ``BlockIndex``."""

    def __init__(self, policy: EvictionPolicy) -> None:
        self.index = BlockIndex(policy)

    def insert(self, *names: str, parent: str | None = None) -> None:
        """Insert ``names`` as one chain under ``parent`` (independent blocks: call per name)."""
        for n in names:
            meta = BlockMeta(
                key(n), NS, key(parent) if parent else None, 1, 0, DRAM, SlotId(0), 0, 0
            )
            self.index.insert(meta)
            parent = n

    def hit(self, *names: str) -> None:
        for n in names:
            meta = self.index.get(key(n))
            assert meta is not None, n
            self.index.touch(meta, 0.0)

    def evict(self, count: int) -> list[str]:
        """Evict ``count`` blocks one call at a time; their names in order."""
        out = []
        for _ in range(count):
            batch = self.index.select_victims(DRAM, 1, 0.0, budget=1000)
            assert batch.victims, f"no victim after {out}"
            out.append(name(batch.victims[0].key))
            self.index.remove(batch.victims[0], MissReason.EVICTED)
        return out
