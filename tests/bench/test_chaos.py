"""The chaos harness: its accounting (what counts as retried, recomputed, failed, wrong,
detected, recovered) with a fake store, and one real fault end to end."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bench.chaos_faults import Phases, store_node_kill
from bench.chaos_load import Outcome, StoreLoad, Tally, block_of
from bench.chaos_stacks import NAMESPACE, SPEC
from kvstore.errors import ServiceUnavailable


class FakeStore:
    """Keeps what is put; can fail the next calls, forget everything, or flip a byte."""

    def __init__(self) -> None:
        self.blocks: dict[bytes, bytes] = {}
        self.failures = 0
        self.corrupt = False

    async def put(self, ns_id: Any, keys: Any, blocks: Any, parent: Any = None) -> None:
        self._maybe_fail()
        self.blocks.update((bytes(k), bytes(b)) for k, b in zip(keys, blocks, strict=True))

    async def get(self, ns_id: Any, keys: Any, buffers: Any = None) -> Any:
        self._maybe_fail()
        found = []
        for key in keys:
            if bytes(key) not in self.blocks:
                break
            data = bytearray(self.blocks[bytes(key)])
            if self.corrupt:
                data[0] ^= 1
            found.append(bytes(data))
        return type("Result", (), {"num_hits": len(found), "blocks": found})()

    def _maybe_fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise ServiceUnavailable("injected")


def load_over(store: FakeStore, num_chains: int = 1) -> StoreLoad:
    return StoreLoad(
        store,
        NAMESPACE.id,
        block_bytes=SPEC.block_bytes,
        block_tokens=SPEC.block_tokens,
        num_chains=num_chains,
        chain_blocks=2,
        seed=0,
    )


async def test_each_outcome_is_counted_where_it_belongs() -> None:
    store = FakeStore()
    load = load_over(store)
    await load.one()  # put
    await load.one()  # read back, right
    store.failures = 2
    await load.one()  # two errors, then right: retried
    store.blocks.clear()
    await load.one()  # stored, now missing: recomputed (and put again)
    store.failures = 100
    await load.one()  # gives up: failed
    outcomes = [o for _, o, _ in load.tally.events]
    assert outcomes == [Outcome.OK, Outcome.OK, Outcome.RETRIED, Outcome.RECOMPUTED, Outcome.FAILED]
    assert load.tally.wrong == 0
    store.failures, store.corrupt = 0, True
    await load.one()
    assert load.tally.wrong == 2  # both blocks of the chain


def test_detect_and_recover_come_from_the_errors_clients_saw() -> None:
    tally = Tally()
    now = time.monotonic()
    tally.errors = [now - 5, now + 1.0, now + 3.5]
    tally.events = [(now + 4, Outcome.RETRIED, 0.1), (now + 5, Outcome.OK, 0.01)]
    window = tally.window(now)
    assert window.detect_s(now) == pytest.approx(1.0)
    assert window.recover_s(now) == pytest.approx(3.5)
    assert window.counts() == {"ok": 1, "retried": 1, "recomputed": 0, "failed": 0}
    quiet = Tally().window(now)
    assert quiet.detect_s(now) is None and quiet.recover_s(now) == 0.0


def test_a_block_is_its_key_repeated() -> None:
    key = bytes(range(16))
    assert block_of(key, 40) == key + key + key[:8]  # type: ignore[arg-type]


def test_killing_a_store_node_under_load_loses_no_byte() -> None:
    result = asyncio.run(store_node_kill(Phases(pre_s=1, during_s=1.5, after_s=3)))
    assert result.wrong == 0
    assert result.ok > 0 and result.detect_s is not None  # it was felt, and measured
    assert result.recover_s is not None and result.recover_s < 30
