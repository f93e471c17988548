"""DRAM and NVMe tier throughput, each against the raw limit of its medium.

All figures are GB/s (1e9 bytes/s) of 1 MiB blocks over one working set: the median of
``repeats`` timed passes after an untimed warm-up pass (page faults, unwritten ext4
extents). Each limit is measured in the same rounds as the store it bounds (a raw pass
right before each store pass), because a VM's memory and disk speeds drift over seconds.
Puts go in batches of ``batch_blocks`` new keys (one prefix chain per round); gets copy
into ``batch_blocks`` page-aligned caller buffers, reused batch after batch::

    source region (working set)           caller buffers (one batch)
    | blk 0 | blk 1 | ... | blk N-1 |  --> | buf 0 | ... | buf B-1 |   block i -> buf i % B

* ``memcpy_gbps``: numpy copies of that same access pattern, no store: the DRAM limit.
* ``dram_put_gbps`` / ``dram_get_gbps``: ``NodeStore.put`` / ``get_into`` with only the
  DRAM tier (capacity = working set). Target: get >= 0.5 x memcpy.
* ``odirect_write_gbps`` / ``odirect_read_gbps``: ``os.pwritev`` / ``os.preadv`` of aligned
  buffers on an ``O_DIRECT`` file in the NVMe tier's directory, each batch split into
  ``io_threads`` contiguous chunks on as many threads, as the tier does; ``*_1t_gbps``
  is the same with one thread. The targets use the ``io_threads`` figures (same
  parallelism as the tier, so the comparison is like for like).
* ``nvme_put_gbps`` / ``nvme_get_gbps``: the store with only the NVMe tier. Reads are
  cold (``drop_cache()`` first). Targets: >= 0.5 x the raw O_DIRECT figures.

A missed target means the store's own work (checksums, staging copies, LMDB commits,
executor hops) costs as much as the bytes' trip through memory or to disk.

Capacity overhead of the size classes (``stored_per_used_*``): a DRAM tier of
``overhead_bytes`` is filled past its capacity (twice over, so eviction runs) with
one-block chains of 32 KiB, 256 KiB, 1 MiB, 2 MiB or 5 MiB, or all five mixed (the same
bytes of each size per round, in random order); the figure is the bytes of the resident
blocks over the tier's capacity. Target: the stated bound, ``1 - S / page_bytes`` for
the largest size S in the run (a page's tail is less than one slot).
"""

from __future__ import annotations

import asyncio
import functools
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench.common import Target, console, parser, progress, report
from kvstore.buffers import aligned_blocks, aligned_buffer
from kvstore.config import DEFAULT_PAGE_BYTES, load_config
from kvstore.hashing import Namespace, prefix_keys
from kvstore.layout import BlockSpec, KVDtype
from kvstore.store import NodeStore
from kvstore.types import BlockKey, NamespaceId, TierKind

MiB = 1 << 20
BLOCK_BYTES = MiB
# 8 layers x (K, V) x 256 tokens x 2 heads x 64 dims x 2 bytes = 1 MiB
SPEC = BlockSpec(num_layers=8, num_kv_heads=2, head_dim=64, dtype=KVDtype.FLOAT16, block_tokens=256)
REPO_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class TierBenchConfig:
    working_set_bytes: int = 2048 * MiB
    batch_blocks: int = 64
    repeats: int = 5
    io_threads: int = 4
    data_dir: Path = REPO_DIR  # a temp dir is made here: must be the real disk, not tmpfs
    seed: int = 0
    overhead_bytes: int = 1024 * MiB  # the DRAM tier of the capacity-overhead runs
    page_bytes: int = DEFAULT_PAGE_BYTES  # its pages (store.page_bytes)

    @property
    def num_blocks(self) -> int:
        return self.working_set_bytes // BLOCK_BYTES


QUICK = TierBenchConfig(working_set_bytes=512 * MiB, repeats=3, overhead_bytes=512 * MiB)
KiB = 1 << 10
OVERHEAD_SIZES = {"32k": 32 * KiB, "256k": 256 * KiB, "1m": MiB, "2m": 2 * MiB, "5m": 5 * MiB}


Tick = Callable[[int], None]  # advances the progress bar by a number of blocks
Pass = Callable[[Tick], float]  # one timed pass over the working set, in GB/s


class Workload(NamedTuple):
    blocks: list[memoryview]  # the source region, one page-aligned view per block
    source: np.ndarray  # the same bytes as [num_blocks, BLOCK_BYTES]
    dsts: list[memoryview]  # one batch of page-aligned caller buffers


class Baselines(NamedTuple):
    before_put: Mapping[str, Pass]  # figure name -> pass, run before each store put pass
    before_get: Mapping[str, Pass]  # the same before each get pass


class StoreRun(NamedTuple):
    figures: dict[str, float]  # medians: the store's put/get and every baseline
    direct_io: bool  # whether the NVMe tier (if any) opened its slabs with O_DIRECT


def make_workload(config: TierBenchConfig) -> Workload:
    """A random source region of the working set and one batch of caller buffers."""
    region = aligned_buffer(config.num_blocks * BLOCK_BYTES)
    source = np.frombuffer(region, dtype=np.uint8).reshape(config.num_blocks, BLOCK_BYTES)
    rng = np.random.default_rng(config.seed)
    for row in source:  # random bytes, so no layer below can dedup or compress them
        row.view(np.uint64)[:] = rng.integers(0, 2**63, BLOCK_BYTES // 8, np.uint64)
    blocks = [region[i * BLOCK_BYTES : (i + 1) * BLOCK_BYTES] for i in range(config.num_blocks)]
    return Workload(blocks, source, aligned_blocks(config.batch_blocks, BLOCK_BYTES))


def memcpy_pass(work: Workload, tick: Tick) -> float:
    """numpy copies of every source block into the reused caller buffers (no store)."""
    dsts = [np.frombuffer(d, dtype=np.uint8) for d in work.dsts]
    start = time.perf_counter()
    for first in range(0, len(work.source), len(dsts)):
        for dst, src in zip(dsts, work.source[first : first + len(dsts)], strict=False):
            np.copyto(dst, src)
        tick(len(dsts))
    return _gbps(len(work.source), start)


class RawFile:
    """A preallocated O_DIRECT file the size of the working set, with no store on top:
    block i lives at offset i * 1 MiB, and each batch is split across threads the way
    ``NvmeTier._gather`` splits it. Writes come from the source region, reads go into
    the caller buffers, as the store's do."""

    def __init__(self, path: Path, work: Workload, io_threads: int) -> None:
        self.path, self.work = path, work
        self.fd, self.direct_io = _open_file(path)
        os.posix_fallocate(self.fd, 0, len(work.blocks) * BLOCK_BYTES)
        self._pools = {n: ThreadPoolExecutor(n, "bench-raw-io") for n in {1, io_threads}}

    def __enter__(self) -> RawFile:
        return self

    def __exit__(self, *exc: object) -> None:
        for pool in self._pools.values():
            pool.shutdown()
        os.close(self.fd)
        self.path.unlink(missing_ok=True)

    def pass_of(self, io: Callable[[int, list[memoryview], int], int], threads: int) -> Pass:
        """A pass of ``os.pwritev`` or ``os.preadv`` over every block on ``threads``."""
        bufs = self.work.blocks if io is os.pwritev else self.work.dsts
        return functools.partial(
            self._pass, threads, lambda i: io(self.fd, [bufs[i % len(bufs)]], i * MiB)
        )

    def _pass(self, num_threads: int, io: Callable[[int], int], tick: Tick) -> float:
        pool = self._pools[num_threads]
        num_blocks, step = len(self.work.blocks), len(self.work.dsts)
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)  # cold, if not O_DIRECT
        start = time.perf_counter()
        for first in range(0, num_blocks, step):
            batch = range(first, min(first + step, num_blocks))
            for _ in pool.map(functools.partial(_io_span, io), _split(batch, num_threads)):
                pass
            tick(len(batch))
        return _gbps(num_blocks, start)


async def measure_store(
    config: TierBenchConfig,
    work: Workload,
    overrides: dict[str, str],
    label: str,
    baselines: Baselines,
) -> StoreRun:
    """Rounds of: baselines, put every block, baselines, get every block (cold), remove."""
    before_put, before_get = baselines
    base = {"store.block_bytes": str(BLOCK_BYTES), "store.node_id": "bench-tiers"}
    store = await NodeStore.open(load_config(env={}, overrides={**base, **overrides}))
    try:
        ns_id = store.register_namespace(Namespace(model_id="bench-tiers", spec=SPEC))
        nvme = store.tiering.tiers.get(TierKind.NVME)
        rng = np.random.default_rng(config.seed)
        samples: dict[str, list[float]] = defaultdict(list)
        num_passes = (config.repeats + 1) * (2 + len(before_put) + len(before_get))
        with progress() as bar:
            task = bar.add_task(label, total=num_passes * config.num_blocks)
            tick: Tick = functools.partial(bar.advance, task)
            for _ in range(config.repeats + 1):
                tokens = rng.integers(0, 2**31 - 1, config.num_blocks * SPEC.block_tokens)
                keys = prefix_keys(ns_id, tokens, SPEC.block_tokens)
                for name, baseline in before_put.items():
                    samples[name].append(baseline(tick))
                put_gbps = await _store_pass(store, ns_id, keys, work, tick, put=True)
                samples[f"{label}_put_gbps"].append(put_gbps)
                if nvme is not None:
                    nvme.drop_cache()  # type: ignore[attr-defined]
                for name, baseline in before_get.items():
                    samples[name].append(baseline(tick))
                get_gbps = await _store_pass(store, ns_id, keys, work, tick, put=False)
                samples[f"{label}_get_gbps"].append(get_gbps)
                await store.remove(ns_id, keys[::-1])  # LIFO free list: next round ascends
        figures = {name: float(np.median(values[1:])) for name, values in samples.items()}
        return StoreRun(figures, bool(getattr(nvme, "direct_io", False)))
    finally:
        await store.close()


async def _store_pass(
    store: NodeStore,
    ns_id: NamespaceId,
    keys: list[BlockKey],
    work: Workload,
    tick: Tick,
    *,
    put: bool,
) -> float:
    """Put (or get) every key, a batch per call, checking that no block was skipped."""
    step = len(work.dsts)
    start = time.perf_counter()
    for i in range(0, len(keys), step):
        batch = keys[i : i + step]
        if put:
            parent = keys[i - 1] if i else None
            done = (await store.put(ns_id, batch, work.blocks[i : i + step], parent)).num_stored
        else:
            done = (await store.get_into(ns_id, batch, work.dsts)).num_hits
        if done != len(batch):
            raise RuntimeError(f"{'put stored' if put else 'get hit'} {done} of {len(batch)}")
        tick(len(batch))
    return _gbps(len(keys), start)


def spec_of(block_bytes: int) -> BlockSpec:
    """Blocks of ``block_bytes``: 16 tokens x 2 KV heads x 64 dims x float16 a layer."""
    return BlockSpec(block_bytes // (16 * 2 * 64 * 2 * 2), 2, 64, KVDtype.FLOAT16, 16)


async def stored_per_used(config: TierBenchConfig, sizes: list[int]) -> float:
    """Fill a DRAM tier twice over with one-block chains of ``sizes`` (equal bytes of each
    per round, shuffled); bytes of the resident blocks / the tier's capacity."""
    overrides = {
        "store.node_id": "bench-tiers-overhead",
        "store.block_bytes": str(max(sizes)),
        "store.page_bytes": str(config.page_bytes),
        "tiers.dram.capacity_bytes": str(config.overhead_bytes),
    }
    rng = np.random.default_rng(config.seed)
    source = aligned_buffer(max(sizes))
    async with await NodeStore.open(load_config(env={}, overrides=overrides)) as store:
        namespaces = {s: store.register_namespace(Namespace(f"ns-{s}", spec_of(s))) for s in sizes}
        round_sizes = [s for s in sizes for _ in range(-(-max(sizes) // s))]
        written = 0
        while written < 2 * config.overhead_bytes:
            for size in rng.permutation(round_sizes):
                ns_id = namespaces[int(size)]
                tokens = rng.integers(0, 2**31 - 1, 16)
                await store.put(ns_id, prefix_keys(ns_id, tokens, 16), [source[:size]])
                written += int(size)
        (dram,) = store.stats().tiers
        return dram.stored_bytes / dram.capacity_bytes


def overhead(config: TierBenchConfig) -> dict[str, float]:
    """``stored_per_used_<size>`` for each size alone, and ``stored_per_used_mixed``."""
    runs = {name: [size] for name, size in OVERHEAD_SIZES.items()}
    runs["mixed"] = list(OVERHEAD_SIZES.values())
    return {
        f"stored_per_used_{n}": asyncio.run(stored_per_used(config, s)) for n, s in runs.items()
    }


def overhead_targets(page_bytes: int) -> dict[str, Target]:
    """The stated bound: at least ``1 - S / page`` of a full tier holds block bytes."""
    bound = {n: 1 - s / page_bytes for n, s in OVERHEAD_SIZES.items()}
    bound["mixed"] = min(bound.values())
    return {f"stored_per_used_{n}": Target(b) for n, b in bound.items()}


def run(config: TierBenchConfig) -> tuple[dict[str, float], dict[str, object]]:
    """Every figure of this benchmark, and facts found on the way (for the config)."""
    work = make_workload(config)
    dram_overrides = {"tiers.dram.capacity_bytes": str(config.working_set_bytes)}
    memcpy = {"memcpy_gbps": functools.partial(memcpy_pass, work)}
    dram = asyncio.run(measure_store(config, work, dram_overrides, "dram", Baselines({}, memcpy)))
    threads = {"": config.io_threads, "_1t": 1}
    with (
        tempfile.TemporaryDirectory(prefix=".bench-tiers-", dir=config.data_dir) as tmp,
        RawFile(Path(tmp) / "raw-baseline.dat", work, config.io_threads) as raw,
    ):
        writes = {f"odirect_write{s}_gbps": raw.pass_of(os.pwritev, n) for s, n in threads.items()}
        reads = {f"odirect_read{s}_gbps": raw.pass_of(os.preadv, n) for s, n in threads.items()}
        nvme_overrides = _nvme_overrides(config, Path(tmp))
        nvme = asyncio.run(
            measure_store(config, work, nvme_overrides, "nvme", Baselines(writes, reads))
        )
    figures = {**dram.figures, **nvme.figures}
    order = ["memcpy", "dram_put", "dram_get", "odirect_write", "odirect_read"]
    order += ["odirect_write_1t", "odirect_read_1t", "nvme_put", "nvme_get"]
    results = {f"{name}_gbps": figures[f"{name}_gbps"] for name in order}
    results.update(overhead(config))
    return results, {"raw_direct_io": raw.direct_io, "nvme_direct_io": nvme.direct_io}


def main(argv: list[str] | None = None, config: TierBenchConfig | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None, help="where the NVMe temp dir goes")
    args = p.parse_args(argv)
    config = config or (QUICK if args.quick else TierBenchConfig())
    config = replace(config, seed=args.seed, data_dir=args.dir or config.data_dir)
    fs_type = _fs_type(config.data_dir)
    if fs_type in ("tmpfs", "ramfs"):
        console.print(f"[yellow]{config.data_dir} is {fs_type}: NVMe figures measure RAM")
    results, facts = run(config)
    shown = {**asdict(config), "block_bytes": BLOCK_BYTES, "data_fs": fs_type, **facts}
    report(
        "tiers",
        {k: str(v) if isinstance(v, Path) else v for k, v in shown.items()},
        results,
        units={k: "ratio" if k.startswith("stored_per_used") else "GB/s" for k in results},
        targets={
            "dram_get_gbps": Target(0.5, "memcpy_gbps"),
            "nvme_put_gbps": Target(0.5, "odirect_write_gbps"),
            "nvme_get_gbps": Target(0.5, "odirect_read_gbps"),
            **overhead_targets(config.page_bytes),
        },
        json_path=args.json,
    )


def _nvme_overrides(config: TierBenchConfig, directory: Path) -> dict[str, str]:
    return {
        "tiers.dram.enabled": "false",
        "tiers.nvme.enabled": "true",
        "tiers.nvme.path": str(directory),
        "tiers.nvme.capacity_bytes": str(config.working_set_bytes),
        "tiers.nvme.io_threads": str(config.io_threads),
    }


def _split(blocks: range, num_chunks: int) -> list[range]:
    """Contiguous chunks, one per thread, as ``NvmeTier._gather`` splits a batch."""
    size = -(-len(blocks) // min(num_chunks, len(blocks)))
    return [blocks[i : i + size] for i in range(0, len(blocks), size)]


def _io_span(io: Callable[[int], int], span: range) -> None:
    for block in span:
        if io(block) != BLOCK_BYTES:
            raise OSError(f"short I/O at block {block}")


def _open_file(path: Path) -> tuple[int, bool]:
    """Open ``path`` with O_DIRECT where the filesystem allows it (as the tier does)."""
    flags = os.O_RDWR | os.O_CREAT
    try:
        return os.open(path, flags | os.O_DIRECT, 0o600), True
    except OSError:
        return os.open(path, flags, 0o600), False


def _gbps(num_blocks: int, start: float) -> float:
    return num_blocks * BLOCK_BYTES / (time.perf_counter() - start) / 1e9


def _fs_type(path: Path) -> str:
    """Filesystem type of the mount holding ``path`` (from /proc/self/mounts)."""
    best, fs_type = "", "unknown"
    resolved = str(path.resolve())
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _, mount, kind, *_ = line.split()
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, fs_type = mount, kind
    return fs_type


if __name__ == "__main__":
    main()
