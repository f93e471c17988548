"""A full disk under the NVMe tier: the store degrades, never wedges, and recovers.

The fault is real: the NVMe directory sits on a small tmpfs mount that a filler file
fills to ENOSPC, so LMDB commits and slab writes fail the way they do on a full disk.
Mounting needs root (CI runs as root); elsewhere the tests skip with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.errors import TierUnavailable
from kvstore.store import NodeStore
from kvstore.types import BlockKey, BlockState, TierKind
from tests.conftest import BLOCK, NAMESPACE, FakeClock, block_bytes, chain_keys, store_config

NS = NAMESPACE.id
DRAM, NVME = TierKind.DRAM, TierKind.NVME


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write a file under ``path`` until the filesystem is full."""
    filler = path / "filler"
    chunk = b"\xff" * (64 << 10)
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


async def open_store(root: Path, clock: FakeClock, **overrides: str) -> NodeStore:
    values = {
        "tiers.dram.capacity_bytes": str(8 * BLOCK),
        "tiers.nvme.capacity_bytes": str(256 * BLOCK),
        "tiers.nvme.slab_bytes": str(256 * BLOCK),
        **overrides,
    }
    store = await NodeStore.open(store_config(root, **values), clock=clock)
    store.register_namespace(NAMESPACE)
    return store


def assert_slots_balance(store: NodeStore) -> None:
    """Used slots are exactly the blocks (and NVMe copies) held: nothing leaked."""
    for usage in store.stats().tiers:
        assert usage.num_used_slots == usage.num_blocks + usage.num_copies, usage
    assert all(meta.state is BlockState.RESIDENT for meta in store.index.blocks())


async def hits(store: NodeStore, keys: list[BlockKey], data: dict[BlockKey, bytes]) -> int:
    out = [bytearray(BLOCK) for _ in keys]
    got = await store.get_into(NS, keys, out)
    assert [bytes(b) for b in out[: got.num_hits]] == [data[k] for k in keys[: got.num_hits]]
    return got.num_hits


async def test_a_full_disk_degrades_to_dram_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    chains = [chain_keys(4, start=1000 * c) for c in range(80)]
    data = {k: block_bytes(i) for i, k in enumerate(k for c in chains for k in c)}
    with tmpfs(tmp_path / "disk", "3m") as disk:
        store = await open_store(disk, clock)
        try:
            for keys in chains[:6]:  # 24 blocks: 16 demoted to NVMe
                await store.put(NS, keys, [data[k] for k in keys])
            on_nvme = [k for c in chains[:6] for k in c if store.lookup(NS, [k]).tiers == [NVME]]
            filler = fill(disk)
            caplog.set_level(logging.WARNING)
            for keys in chains[6:40]:  # demotions fail: DRAM keeps taking puts, by dropping
                assert (await store.put(NS, keys, [data[k] for k in keys])).num_stored == 4
                assert await hits(store, keys, data) == 4
            assert store.tiering.is_down(NVME)
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert 1 <= len(warnings) <= 3, [r.getMessage() for r in warnings]
            for key in on_nvme:  # NVMe hits still served (and promoted into DRAM)
                assert await hits(store, [key], data) == 1

            filler.unlink()
            clock.advance(store.tiering.retry_s)
            before = sum(store.stats().demotions.values())
            for keys in chains[40:80]:
                assert (await store.put(NS, keys, [data[k] for k in keys])).num_stored == 4
            assert sum(store.stats().demotions.values()) >= before + 100
            assert not store.tiering.is_down(NVME)
            assert await store.evict(DRAM, 8) == 8
            assert_slots_balance(store)
            nvme_keys = [k for k in data if (m := store.index.get(k)) and m.tier is NVME]
        finally:
            await store.close()
        store = await open_store(disk, clock)  # what NVMe recorded is intact
        try:
            assert all([await hits(store, [k], data) for k in nvme_keys])
            assert store.stats().corrupted_blocks == {}
            assert_slots_balance(store)
        finally:
            await store.close()


async def test_puts_into_a_full_nvme_only_store_fail_clearly(tmp_path: Path) -> None:
    clock = FakeClock()
    chains = [chain_keys(2, start=1000 * c) for c in range(20)]
    data = {k: block_bytes(i) for i, k in enumerate(k for c in chains for k in c)}
    with tmpfs(tmp_path / "disk", "3m") as disk:
        store = await open_store(disk, clock, **{"tiers.dram.enabled": "false"})
        try:
            await store.put(NS, chains[0], [data[k] for k in chains[0]])
            filler = fill(disk)
            failures = 0
            for keys in chains[1:10]:
                try:
                    await store.put(NS, keys, [data[k] for k in keys])
                except TierUnavailable as exc:
                    assert "nvme" in str(exc).lower()
                    failures += 1
            assert failures > 0
            assert await hits(store, chains[0], data) == 2
            nvme = store.tiering.tiers[NVME]
            used = nvme.slots.num_used
            assert await store.remove(NS, chains[0][1:]) == 1  # the index cannot delete yet:
            assert nvme.slots.num_used == used  # the slot stays taken, its record intact
            filler.unlink()
            clock.advance(store.tiering.retry_s)
            for keys in chains[10:20]:
                assert (await store.put(NS, keys, [data[k] for k in keys])).num_stored == 2
                assert await hits(store, keys, data) == 2
            assert_slots_balance(store)
        finally:
            await store.close()


async def test_write_through_puts_fail_while_the_disk_is_full(tmp_path: Path) -> None:
    clock = FakeClock()
    chains = [chain_keys(2, start=1000 * c) for c in range(20)]
    data = {k: block_bytes(i) for i, k in enumerate(k for c in chains for k in c)}
    with tmpfs(tmp_path / "disk", "3m") as disk:
        store = await open_store(disk, clock, **{"tiers.nvme.write_through": "true"})
        try:
            await store.put(NS, chains[0], [data[k] for k in chains[0]])
            filler = fill(disk)
            failed = []
            for keys in chains[1:10]:
                try:
                    await store.put(NS, keys, [data[k] for k in keys])
                except TierUnavailable:
                    failed.append(keys)
            assert failed
            assert not any(store.exists(NS, [k for keys in failed for k in keys]))
            assert await hits(store, chains[0], data) == 2  # DRAM still serves
            filler.unlink()
            clock.advance(store.tiering.retry_s)
            for keys in chains[10:20]:
                assert (await store.put(NS, keys, [data[k] for k in keys])).num_stored == 2
            assert_slots_balance(store)
            metas = [store.index.get(k) for keys in chains[10:20] for k in keys]
            assert all(m is not None and (m.tier is NVME or m.nvme_slot is not None) for m in metas)
        finally:
            await store.close()
