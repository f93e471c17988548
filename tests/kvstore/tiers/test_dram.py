import asyncio
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kvstore.config import load_config
from kvstore.errors import ConfigError, TierUnavailable
from kvstore.tiers.base import BlockRecord, ReadItem, WriteItem
from kvstore.tiers.dram import DramTier
from kvstore.tiers.factory import open_tiers, remove_stale_arenas
from kvstore.types import BlockKey, NamespaceId, SlotId

KEYS = [BlockKey(bytes([i]) * 16) for i in range(4)]


def record(slot: int, length: int) -> BlockRecord:
    return BlockRecord(
        BlockKey(b"k" * 16), NamespaceId(b"n" * 16), None, SlotId(slot), length, 0, 0.0, 0.0
    )


async def test_slots_are_page_aligned_views_of_one_shared_file(tmp_path: Path) -> None:
    tier = DramTier(4 * 8192, 8192, name="t1", shm_dir=tmp_path, pin_memory=False)
    try:
        assert tier.path.stat().st_size == 4 * 8192
        slots = tier.slots.allocate(5000, KEYS)
        assert slots == [0, 8192, 16384, 24576]
        addresses = [np.frombuffer(tier.view(s), np.uint8).ctypes.data for s in slots]
        assert all(a % 4096 == 0 for a in addresses)
        assert all(tier.view(s).nbytes == 8192 for s in slots)
        await tier.write([WriteItem(record(8192, 5), b"hello")])
        out = bytearray(5)
        assert await tier.read([ReadItem(SlotId(8192), 5, 0, memoryview(out))]) == [True]
        assert out == b"hello"
    finally:
        await tier.close()
    assert not tier.path.exists()


async def test_another_process_maps_the_arena(tmp_path: Path) -> None:
    tier = DramTier(2 * 4096, 2 * 4096, name="t2", shm_dir=tmp_path, pin_memory=False)
    try:
        assert tier.slots.allocate(4096, KEYS[:2]) == [0, 4096]
        tier.view(SlotId(4096))[:6] = b"shared"
        code = (
            "import mmap, sys\n"
            "f = open(sys.argv[1], 'r+b')\n"
            "m = mmap.mmap(f.fileno(), 0)\n"
            "sys.stdout.write(m[4096:4102].decode())\n"
            "m[0:4] = b'back'\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(tier.path)], capture_output=True, text=True, check=True
        )
        assert out.stdout == "shared"
        assert bytes(tier.view(SlotId(0))[:4]) == b"back"
    finally:
        await tier.close()


def test_a_full_shared_memory_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TierUnavailable, match="capacity_bytes"):
        DramTier(1 << 50, 1 << 30, name="huge", shm_dir=tmp_path, pin_memory=False)  # 1 PiB
    assert not list(tmp_path.iterdir())


async def test_a_name_in_use_is_refused(tmp_path: Path) -> None:
    tier = DramTier(4096, 4096, name="dup", shm_dir=tmp_path, pin_memory=False)
    try:
        with pytest.raises(ConfigError, match="exists"):
            DramTier(4096, 4096, name="dup", shm_dir=tmp_path, pin_memory=False)
    finally:
        await tier.close()


def test_stale_arenas_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f"strata-node-{dead.stdout.strip()}"
    live = tmp_path / "strata-node-1"  # pid 1 is always alive
    other = tmp_path / f"strata-othernode-{dead.stdout.strip()}"
    for path in (stale, live, other):
        path.write_bytes(b"")
    assert sorted(remove_stale_arenas(tmp_path)) == sorted([stale, other])
    assert live.exists()


HOLDER = """
import sys, time
from pathlib import Path
from kvstore.tiers.dram import DramTier
tier = DramTier(4 * 4096, 4096, name=sys.argv[2], shm_dir=Path(sys.argv[1]), pin_memory=False)
print(tier.path, flush=True)
time.sleep(600)
"""


def start_holder(shm_dir: Path, name: str) -> tuple[subprocess.Popen[str], Path]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(shm_dir), name],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_the_arena_of_a_node_killed_with_sigkill_is_removed_at_the_next_start(
    tmp_path: Path,
) -> None:
    proc, arena = start_holder(tmp_path, f"othernode-{os.getpid() + 10**7}")
    try:
        # Its name carries a pid that is not alive here (as from another pid namespace),
        # but its owner lives and holds the lock: it stays.
        assert arena.exists() and remove_stale_arenas(tmp_path) == []
    finally:
        proc.kill()
        proc.wait()
    assert arena.exists()  # SIGKILL: nobody unlinked it
    config = load_config(
        env={},
        overrides={
            "store.node_id": "mine",
            "store.block_bytes": "4KiB",
            "tiers.dram.capacity_bytes": "64KiB",
            "tiers.dram.shm_dir": str(tmp_path),
            "tiers.dram.pin_memory": "false",
        },
    )
    tiers = open_tiers(config)
    try:
        assert not arena.exists()
        assert [p.name for p in tmp_path.iterdir()] == [f"strata-mine-{os.getpid()}"]
    finally:
        for tier in tiers.values():
            asyncio.run(tier.close())
