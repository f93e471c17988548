"""The NVMe tier: durability, recovery and corruption detection, through the store."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvstore.config import load_config
from kvstore.errors import ConfigError
from kvstore.hashing import Namespace
from kvstore.layout import BlockSpec, KVDtype
from kvstore.store import NodeStore
from kvstore.tiers.nvme import NvmeTier
from kvstore.tiers.nvme_index import NvmeIndex
from kvstore.types import MissReason, TierKind
from tests.conftest import BLOCK, NAMESPACE, StoreFactory, block_bytes, chain_keys, store_config

NS = NAMESPACE.id
NVME_ONLY = {"tiers.dram.enabled": "false"}


def buffers(n: int) -> list[bytearray]:
    return [bytearray(BLOCK) for _ in range(n)]


async def test_blocks_and_namespaces_survive_a_restart(make_store: StoreFactory) -> None:
    store = await make_store(**NVME_ONLY)
    keys = chain_keys(6)
    data = [block_bytes(i) for i in range(6)]
    await store.put(NS, keys, data)
    await store.close()

    reopened = await make_store(**NVME_ONLY)
    assert reopened.namespace(NS) == NAMESPACE
    out = buffers(6)
    got = await reopened.get_into(NS, keys, out)
    assert got.num_hits == 6 and got.tiers == [TierKind.NVME] * 6
    assert [bytes(b) for b in out] == data


async def test_recovered_blocks_keep_their_prefix_tree(make_store: StoreFactory) -> None:
    store = await make_store(**NVME_ONLY)
    keys = chain_keys(16)
    await store.put(NS, keys, [block_bytes(i) for i in range(16)])  # NVMe full (16 slots)
    await store.close()
    reopened = await make_store(**NVME_ONLY)
    await reopened.put(NS, chain_keys(1, start=9000), [block_bytes(99)])
    # Prefix-aware eviction after recovery still drops the chain's leaf, not its root.
    assert reopened.lookup(NS, keys).num_blocks == 15


async def test_a_torn_write_is_detected_and_its_slot_reused(tmp_path: Path) -> None:
    config = store_config(tmp_path, **NVME_ONLY)
    store = await NodeStore.open(config)
    store.register_namespace(NAMESPACE)
    keys = chain_keys(2)
    await store.put(NS, keys[:1], [block_bytes(0)])
    await store.close()
    # A write that recorded its intent and then died before committing.
    index = NvmeIndex(tmp_path / "nvme" / "index", num_slots=16, fsync=False)
    from kvstore.tiers.base import BlockRecord
    from kvstore.types import SlotId

    index.begin([BlockRecord(keys[1], NS, keys[0], SlotId(BLOCK), BLOCK, 0, 0.0, 0.0)])
    index.close()

    store = await NodeStore.open(config)
    try:
        assert store.stats().torn_writes == 1
        assert store.lookup(NS, keys).num_blocks == 1  # the torn block is not there
        tier = store.tiering.tiers[TierKind.NVME]
        assert tier.slots.num_used == 1
    finally:
        await store.close()


@pytest.mark.parametrize("direct_io", ["true", "false"])
async def test_flipped_bytes_are_detected_and_never_served(
    make_store: StoreFactory, tmp_path: Path, direct_io: str
) -> None:
    store = await make_store(**NVME_ONLY, **{"tiers.nvme.direct_io": direct_io})
    keys = chain_keys(3)
    data = [block_bytes(i) for i in range(3)]
    await store.put(NS, keys, data)
    slot = store.index.get(keys[1]).slot  # type: ignore[union-attr]
    await store.close()

    slab = tmp_path / "nvme" / "slab-00000.dat"
    with open(slab, "r+b") as f:
        f.seek(slot + 100)
        byte = f.read(1)
        f.seek(slot + 100)
        f.write(bytes([byte[0] ^ 0xFF]))

    store = await make_store(**NVME_ONLY, **{"tiers.nvme.direct_io": direct_io})
    out = buffers(3)
    got = await store.get_into(NS, keys, out)
    assert got.num_hits == 1
    assert bytes(out[0]) == data[0]
    stats = store.stats()
    assert stats.corrupted_blocks == {TierKind.NVME: 1}
    assert stats.namespaces[0].miss_blocks == {MissReason.CORRUPTED: 2}
    assert store.lookup(NS, keys).miss_reason is MissReason.CORRUPTED
    async with store.read(NS, keys) as run:
        views = run.blocks
        assert len(views) == 1
    assert store.tiering.tiers[TierKind.NVME].slots.num_used == 2  # its slot was freed


async def test_block_sizes_that_are_not_page_multiples(make_store: StoreFactory) -> None:
    odd = Namespace("odd", BlockSpec(1, 1, 10, KVDtype.FLOAT32, 3))  # 240 bytes
    for direct_io in ("true", "false"):
        store = await make_store(**NVME_ONLY, **{"tiers.nvme.direct_io": direct_io})
        ns = store.register_namespace(odd)
        keys = [bytes([i]) * 16 for i in range(3)]
        data = [bytes([i + 1]) * odd.block_bytes for i in range(3)]
        await store.put(ns, keys, data)  # type: ignore[arg-type]
        out = [bytearray(odd.block_bytes) for _ in range(3)]
        assert (await store.get_into(ns, keys, out)).num_hits == 3  # type: ignore[arg-type]
        assert [bytes(b) for b in out] == data
        await store.close()


async def test_committed_blocks_survive_kill_9(tmp_path: Path) -> None:
    """A writer acknowledges each put on stdout; it is killed mid-stream. Every
    acknowledged block must come back intact; nothing half-written may be served."""
    script = tmp_path / "writer.py"
    script.write_text(
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from kvstore.store import NodeStore\n"
        "from tests.conftest import NAMESPACE, block_bytes, chain_keys, store_config\n"
        "async def main():\n"
        "    config = store_config(Path(sys.argv[1]), **{'tiers.dram.enabled': 'false',\n"
        "        'tiers.nvme.capacity_bytes': str(4096 * 4096)})\n"
        "    store = await NodeStore.open(config)\n"
        "    ns = store.register_namespace(NAMESPACE)\n"
        "    keys = chain_keys(4000)\n"
        "    for i in range(0, 4000, 2):\n"
        "        await store.put(ns, keys[i:i+2], [block_bytes(i), block_bytes(i+1)],\n"
        "                        parent=keys[i-1] if i else None)\n"
        "        print(i + 2, flush=True)\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    acked = 0
    deadline = time.monotonic() + 60
    while acked < 300 and time.monotonic() < deadline:
        acked = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert acked >= 300

    config = load_config(
        env={},
        overrides={
            "store.block_bytes": str(BLOCK),
            "tiers.dram.enabled": "false",
            "tiers.nvme.enabled": "true",
            "tiers.nvme.path": str(tmp_path / "nvme"),
            "tiers.nvme.capacity_bytes": str(4096 * 4096),
            "tiers.nvme.slab_bytes": str(8 * BLOCK),
        },
    )
    store = await NodeStore.open(config)
    try:
        keys = chain_keys(4000)
        out = [bytearray(BLOCK) for _ in range(4000)]
        got = await store.get_into(NS, keys, out)
        assert got.num_hits >= acked  # every acknowledged block, maybe one batch more
        assert all(bytes(out[i]) == block_bytes(i) for i in range(got.num_hits))
        assert store.stats().corrupted_blocks == {}
    finally:
        await store.close()


async def test_a_directory_keeps_its_page_size_and_an_old_layout_is_refused(
    tmp_path: Path,
) -> None:
    async def page_bytes_of(page_bytes: int) -> int:
        tier = NvmeTier(
            tmp_path, 64 << 10, page_bytes, slab_bytes=1 << 20, direct_io=None, fsync=False,
            io_threads=1,
        )  # fmt: skip
        await tier.close()
        return tier.slots.page_bytes

    assert await page_bytes_of(16 << 10) == 16 << 10
    assert await page_bytes_of(32 << 10) == 16 << 10  # the directory's own layout
    (tmp_path / "FORMAT").write_text('{"version": 1, "slot_bytes": 4096, "slab_slots": 4}')
    with pytest.raises(ConfigError, match=r"tiers\.nvme\.path.*older layout"):
        await page_bytes_of(16 << 10)


async def test_a_corrupt_format_file_is_named(tmp_path: Path) -> None:
    def open_tier() -> NvmeTier:
        return NvmeTier(
            tmp_path, 4 * 4096, 4096, slab_bytes=1 << 20, direct_io=None, fsync=False,
            io_threads=1,
        )  # fmt: skip

    await open_tier().close()
    (tmp_path / "FORMAT").write_bytes(b'{"version": 2, "page_by\x00')
    with pytest.raises(ConfigError, match=r"tiers.nvme.path: .*/FORMAT is unreadable or corrupt"):
        open_tier()


def test_an_unwritable_or_too_small_directory_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"tiers\.nvme\.path.*not a writable directory"):
        NvmeTier(
            blocker / "sub",
            16384,
            4096,
            slab_bytes=1 << 20,
            direct_io=None,
            fsync=False,
            io_threads=1,
        )
    with pytest.raises(ConfigError, match=r"tiers\.nvme\.capacity_bytes.*available"):
        NvmeTier(
            tmp_path / "d",
            1 << 40,
            4096,
            slab_bytes=1 << 30,
            direct_io=None,
            fsync=False,
            io_threads=1,
        )


async def test_a_smaller_capacity_drops_blocks_beyond_it(make_store: StoreFactory) -> None:
    pages = {"store.page_bytes": str(4 * BLOCK)}  # NVMe: 4 pages of 4 blocks
    store = await make_store(**NVME_ONLY, **pages)
    keys = chain_keys(12)
    await store.put(NS, keys, [block_bytes(i) for i in range(12)])
    await store.close()
    smaller = await make_store(
        **NVME_ONLY, **pages, **{"tiers.nvme.capacity_bytes": str(8 * BLOCK)}
    )
    assert len(smaller.index) == 8
    out = buffers(12)
    got = await smaller.get_into(NS, keys, out)
    assert all(bytes(out[i]) == block_bytes(i) for i in range(got.num_hits))


async def test_fsync_mode_round_trips(make_store: StoreFactory) -> None:
    store = await make_store(**NVME_ONLY, **{"tiers.nvme.fsync": "true"})
    keys = chain_keys(2)
    await store.put(NS, keys, [block_bytes(0), block_bytes(1)])
    assert (await store.get_into(NS, keys, buffers(2))).num_hits == 2


async def test_a_late_free_of_an_old_slot_keeps_the_newer_record(make_store: StoreFactory) -> None:
    """Remove a block while it is being read, put it again (a new slot, a new record),
    then end the read: freeing the old slot must not erase the new record."""
    store = await make_store(**NVME_ONLY)
    keys = chain_keys(1)
    await store.put(NS, keys, [block_bytes(1)])
    async with store.read(NS, keys) as run:
        views = run.blocks
        await store.remove(NS, keys)
        await store.put(NS, keys, [block_bytes(1)])
        assert bytes(views[0].data) == block_bytes(1)
    await store.close()
    reopened = await make_store(**NVME_ONLY)
    out = buffers(1)
    assert (await reopened.get_into(NS, keys, out)).num_hits == 1
    assert bytes(out[0]) == block_bytes(1)
    assert reopened.tiering.tiers[TierKind.NVME].slots.num_used == 1


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from kvstore.tiers.nvme import NvmeTier
NvmeTier(Path(sys.argv[1]), 4 * 4096, 4096, slab_bytes=1 << 20, direct_io=None, fsync=False,
         io_threads=1)
print("open", flush=True)
time.sleep(600)
"""


async def test_a_second_node_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        with pytest.raises(ConfigError, match=rf"tiers\.nvme\.path.*{tmp_path}.*pid {proc.pid}"):
            NvmeTier(
                tmp_path,
                4 * 4096,
                4096,
                slab_bytes=1 << 20,
                direct_io=None,
                fsync=False,
                io_threads=1,
            )
    finally:
        proc.kill()
        proc.wait()
    # The kernel released the lock of the killed holder: the directory opens again.
    tier = NvmeTier(
        tmp_path, 4 * 4096, 4096, slab_bytes=1 << 20, direct_io=None, fsync=False, io_threads=1
    )
    await tier.close()


async def test_the_tier_is_private_to_its_user(make_store: StoreFactory, tmp_path: Path) -> None:
    """The index holds namespaces' salts: 0700 directories, 0600 files."""
    (tmp_path / "nvme").mkdir(mode=0o755)  # an operator made it world-readable
    store = await make_store()
    await store.put(NAMESPACE.id, chain_keys(1), [block_bytes(0)])
    await store.evict(TierKind.DRAM, 1)
    paths = [tmp_path / "nvme", *(tmp_path / "nvme").rglob("*")]
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert modes and all(
        mode == (0o700 if (tmp_path / name).is_dir() else 0o600) for name, mode in modes.items()
    ), modes
