"""Prefix-key hashing and block checksum throughput on one core.

What is measured:
    * ``hash_tokens_per_s``: tokens keyed per second by ``kvstore.hashing.prefix_keys``
      over one large seeded numpy int32 token array cut into 256-token blocks. This is
      the path an engine takes for every request, so it bounds how many prompt tokens a
      node can look up per second per core.
    * ``hash_list_tokens_per_s`` / ``hash_torch_tokens_per_s``: the same for a Python
      list of ints and for an int64 torch tensor; the extra cost over numpy is the
      conversion to little-endian int32 (``np.asarray`` of a list is the slow part).
    * ``checksum_gbps``: ``kvstore.hashing.checksum`` (xxh3-64) over distinct 1 MiB
      blocks of one region, in GB/s (1e9 bytes/s). Every put and every NVMe read pays it.

How: each figure is the median of ``repeats`` timed passes after one untimed warm-up pass
(the first pass pays page faults and allocator growth). The process is pinned to one
CPU while measuring, so torch or numpy threads cannot make "one core" a lie.

Limits: the target (>= 50e6 tokens/s) leaves a 256-token block about 5 µs; the work is
one xxh3-128 over ~1 KiB plus a ``bytes.join`` per block, so a miss means per-block
Python overhead, not hashing, dominates.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from bench.common import Target, parser, progress, report
from kvstore.hashing import Namespace, checksum, prefix_keys
from kvstore.layout import BlockSpec, KVDtype
from kvstore.types import NamespaceId

if TYPE_CHECKING:
    from kvstore.hashing import Tokens

BLOCK_TOKENS = 256
VOCAB_SIZE = 128_000
MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class HashBenchConfig:
    num_tokens: int = 16 << 20
    num_list_tokens: int = 4 << 20  # a list of ints costs ~36 B per token
    checksum_blocks: int = 512
    checksum_block_bytes: int = MiB
    repeats: int = 5
    seed: int = 0


QUICK = HashBenchConfig(num_tokens=4 << 20, num_list_tokens=1 << 20, checksum_blocks=128)


def bench_namespace() -> NamespaceId:
    spec = BlockSpec(
        num_layers=8, num_kv_heads=2, head_dim=64, dtype=KVDtype.FLOAT16, block_tokens=256
    )
    return Namespace(model_id="bench-hashing", spec=spec).id


def measure_hash_rate(tokens: Tokens, num_tokens: int, repeats: int) -> float:
    """Median tokens/s of ``prefix_keys`` over ``tokens`` (one warm-up pass first)."""
    ns_id = bench_namespace()

    def one_pass() -> float:
        start = time.perf_counter()
        keys = prefix_keys(ns_id, tokens, BLOCK_TOKENS)
        elapsed = time.perf_counter() - start
        assert len(keys) == num_tokens // BLOCK_TOKENS
        return num_tokens / elapsed

    return _median_with_warmup(one_pass, repeats, "prefix_keys")


def measure_checksum_gbps(num_blocks: int, block_bytes: int, repeats: int, seed: int) -> float:
    """Median GB/s of ``checksum`` over ``num_blocks`` distinct blocks of one region."""
    region = np.random.default_rng(seed).integers(
        0, 256, size=num_blocks * block_bytes, dtype=np.uint8
    )
    view = memoryview(region.data)
    blocks = [view[i * block_bytes : (i + 1) * block_bytes] for i in range(num_blocks)]

    def one_pass() -> float:
        start = time.perf_counter()
        for block in blocks:
            checksum(block)
        return num_blocks * block_bytes / (time.perf_counter() - start) / 1e9

    return _median_with_warmup(one_pass, repeats, "checksum")


def run(config: HashBenchConfig) -> dict[str, float]:
    """Every figure of this benchmark for ``config``."""
    import torch

    rng = np.random.default_rng(config.seed)
    tokens = rng.integers(0, VOCAB_SIZE, size=config.num_tokens, dtype=np.int32)
    with _one_core():
        results = {"hash_tokens_per_s": measure_hash_rate(tokens, tokens.size, config.repeats)}
        as_list = tokens[: config.num_list_tokens].tolist()
        results["hash_list_tokens_per_s"] = measure_hash_rate(as_list, len(as_list), config.repeats)
        del as_list
        as_tensor = torch.from_numpy(tokens.astype(np.int64))
        results["hash_torch_tokens_per_s"] = measure_hash_rate(
            as_tensor, as_tensor.numel(), config.repeats
        )
        results["checksum_gbps"] = measure_checksum_gbps(
            config.checksum_blocks, config.checksum_block_bytes, config.repeats, config.seed
        )
    results["hash_us_per_block"] = 1e6 * BLOCK_TOKENS / results["hash_tokens_per_s"]
    return results


def main(argv: list[str] | None = None, config: HashBenchConfig | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    if config is None:
        config = QUICK if args.quick else HashBenchConfig()
    config = HashBenchConfig(**{**asdict(config), "seed": args.seed})
    results = run(config)
    report(
        "hashing",
        {**asdict(config), "block_tokens": BLOCK_TOKENS, "cores": 1},
        results,
        units={
            "hash_tokens_per_s": "tokens/s",
            "hash_list_tokens_per_s": "tokens/s",
            "hash_torch_tokens_per_s": "tokens/s",
            "checksum_gbps": "GB/s",
            "hash_us_per_block": "µs",
        },
        targets={"hash_tokens_per_s": Target(50e6)},
        json_path=args.json,
    )


def _median_with_warmup(one_pass: Callable[[], float], repeats: int, label: str) -> float:
    samples = []
    with progress() as bar:
        task = bar.add_task(label, total=repeats + 1)
        one_pass()
        bar.advance(task)
        for _ in range(repeats):
            samples.append(one_pass())
            bar.advance(task)
    return float(np.median(samples))


@contextlib.contextmanager
def _one_core() -> Iterator[None]:
    """Pin this process to one CPU (the first it may use) for the duration."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


if __name__ == "__main__":
    main()
