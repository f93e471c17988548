"""A hypothesis state machine drives the store against a simple model.

The model is the set of keys put and not removed, with their bytes. Eviction makes the
store hold less than the model, never more and never other bytes:

* a get returns a leading run whose every byte equals the model's;
* a removed key is never returned again, not even after a restart;
* when nothing was ever evicted, a get returns exactly the model's leading run;
* slot accounting balances: in each tier, used slots = resident blocks + reserved slots.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvstore.reservations import Reservation
from kvstore.store import NodeStore
from kvstore.types import BlockKey, TierKind
from tests.conftest import BLOCK, NAMESPACE, FakeClock, block_bytes, chain_keys, store_config

NS = NAMESPACE.id
CHAINS = [chain_keys(6, start=1000 * c) for c in range(4)]
DATA = {k: block_bytes(c * 10 + i) for c, keys in enumerate(CHAINS) for i, k in enumerate(keys)}


class StoreMachine(RuleBasedStateMachine):
    dram_blocks = 4
    nvme_blocks = 8

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp())
        self.clock = FakeClock()
        self.model: set[BlockKey] = set()
        self.removed: set[BlockKey] = set()
        self.reservations: list[Reservation] = []
        self.lost_blocks = False  # set once a restart or an eviction may have lost blocks
        self.store = self._open()

    def _open(self) -> NodeStore:
        config = store_config(
            self.tmp,
            **{
                "tiers.dram.capacity_bytes": str(self.dram_blocks * BLOCK),
                "tiers.nvme.capacity_bytes": str(self.nvme_blocks * BLOCK),
                "store.promotion_min_hits": "1",
                "store.reservation_timeout_s": "10",
            },
        )
        store = self.run(NodeStore.open(config, clock=self.clock))
        store.register_namespace(NAMESPACE)
        return store

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(chain=st.integers(0, 3), start=st.integers(0, 5), length=st.integers(1, 3))
    def put(self, chain: int, start: int, length: int) -> None:
        keys = CHAINS[chain][start : start + length]
        parent = CHAINS[chain][start - 1] if start else None
        try:
            self.run(self.store.put(NS, keys, [DATA[k] for k in keys], parent=parent))
        except Exception as exc:  # capacity: everything pinned by open reservations
            assert type(exc).__name__ == "CapacityExceeded", exc
            return
        self.model.update(keys)
        self.removed.difference_update(keys)

    @rule(chain=st.integers(0, 3), length=st.integers(1, 6))
    def get(self, chain: int, length: int) -> None:
        keys = CHAINS[chain][:length]
        out = [bytearray(BLOCK) for _ in keys]
        got = self.run(self.store.get_into(NS, keys, out))
        for key, buf in zip(keys[: got.num_hits], out, strict=False):
            assert key in self.model and key not in self.removed
            assert bytes(buf) == DATA[key]
        expected = next((i for i, k in enumerate(keys) if k not in self.model), len(keys))
        assert got.num_hits <= expected
        if not self.lost_blocks:
            assert got.num_hits == expected

    @rule(chain=st.integers(0, 3), index=st.integers(0, 5))
    def remove(self, chain: int, index: int) -> None:
        key = CHAINS[chain][index]
        self.run(self.store.remove(NS, [key]))
        self.model.discard(key)
        self.removed.add(key)

    @rule(tier=st.sampled_from([TierKind.DRAM, TierKind.NVME]), count=st.integers(1, 3))
    def evict(self, tier: TierKind, count: int) -> None:
        self.run(self.store.evict(tier, count))

    @rule(chain=st.integers(0, 3), length=st.integers(1, 6), ttl=st.sampled_from([5.0, 50.0]))
    def pin(self, chain: int, length: int, ttl: float) -> None:
        self.store.pin(NS, CHAINS[chain][:length], ttl_s=ttl)

    @rule(seconds=st.sampled_from([1.0, 20.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.store.reclaim_expired()

    @precondition(lambda self: len(self.reservations) < 2)
    @rule(chain=st.integers(0, 3))
    def reserve_and_leave(self, chain: int) -> None:
        keys = CHAINS[chain][-1:]
        try:
            reservation = self.run(self.store.reserve(NS, keys, [CHAINS[chain][-2]]))
        except Exception as exc:
            assert type(exc).__name__ == "CapacityExceeded", exc
            return
        self.reservations.append(reservation)

    @precondition(lambda self: bool(self.reservations))
    @rule()
    def abort_one(self) -> None:
        self.run(self.store.abort(self.reservations.pop()))

    @rule()
    def restart(self) -> None:
        self.reservations.clear()
        self.run(self.store.close())
        self.store = self._open()
        self.lost_blocks = True  # DRAM is volatile

    @invariant()
    def slots_balance(self) -> None:
        stats = self.store.stats()
        self.lost_blocks |= bool(stats.evictions)
        reserved = sum(len(r.blocks) for r in self.reservations if r.state.value == "open")
        for usage in stats.tiers:
            held = reserved if usage.tier is self.store.tiering.top else 0
            assert usage.num_used_slots == usage.num_blocks + usage.num_copies + held, usage

    @invariant()
    def lookup_agrees_with_exists(self) -> None:
        for keys in CHAINS:
            run = self.store.lookup(NS, keys).num_blocks
            assert all(self.store.exists(NS, keys[:run]))


class RoomyStoreMachine(StoreMachine):
    """Enough room that nothing is ever evicted: gets must return the whole model run."""

    dram_blocks = 8
    nvme_blocks = 32


SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreModel = StoreMachine.TestCase
TestStoreModel.settings = SETTINGS
TestRoomyStoreModel = RoomyStoreMachine.TestCase
TestRoomyStoreModel.settings = SETTINGS
