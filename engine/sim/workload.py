"""What the simulator replays: timed requests, from a Mooncake-format trace or synthetic.

A trace is JSONL, one request a line (Mooncake, FAST'25)::

    {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, ...]}

``timestamp`` is in ms; ``hash_ids`` are prefix hashes of ``block_tokens``-token blocks
(512 in Mooncake's traces): equal ids imply equal prefixes. Only full blocks are keyed
(``input_length // block_tokens`` of them), as the store keys only full blocks.

Invariants: requests are sorted by arrival; ``input_tokens >= 1``, ``output_tokens >= 1``;
``keys`` has at most ``input_tokens // block_tokens`` entries. Bad lines raise
``ConfigError`` naming the line and field.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from kvstore.errors import ConfigError
from kvstore.types import BlockKey


@dataclass(frozen=True, slots=True)
class SimRequest:
    request_id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    keys: tuple[BlockKey, ...]  # the prompt's full blocks, first first


def hash_key(hash_id: int) -> BlockKey:
    """A trace block's 16-byte key: its id, little-endian (the benches' mapping too)."""
    return BlockKey(hash_id.to_bytes(16, "little"))


def load_trace(
    path: Path, block_tokens: int, *, limit: int | None = None, max_output_tokens: int | None = None
) -> list[SimRequest]:
    """The first ``limit`` requests (all when None) of a Mooncake-format trace, arrivals
    relative to the first one. Raises ``ConfigError`` for a malformed line."""
    if block_tokens < 1:
        raise ConfigError("block_tokens", f"must be >= 1, got {block_tokens}")
    requests: list[SimRequest] = []
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if limit is not None and len(requests) >= limit:
                break
            if line.strip():
                requests.append(_parse(line, f"{path}:{number}", len(requests), block_tokens))
    if max_output_tokens is not None:
        requests = [
            replace(r, output_tokens=min(r.output_tokens, max_output_tokens)) for r in requests
        ]
    first = min((r.arrival_s for r in requests), default=0.0)
    requests = [replace(r, arrival_s=r.arrival_s - first) for r in requests]
    return sorted(requests, key=lambda r: (r.arrival_s, r.request_id))


def _parse(line: str, where: str, request_id: int, block_tokens: int) -> SimRequest:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(where, f"not valid JSON: {exc}") from exc
    if not isinstance(row, dict):
        raise ConfigError(where, "must be a JSON object")
    values: dict[str, int] = {}
    for name in ("timestamp", "input_length", "output_length"):
        value = row.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where}.{name}", f"must be a number >= 0, got {value!r}")
        values[name] = int(value)
    ids = row.get("hash_ids")
    if not isinstance(ids, list) or not all(isinstance(h, int) and h >= 0 for h in ids):
        raise ConfigError(f"{where}.hash_ids", "must be a list of integers >= 0")
    input_tokens = max(1, values["input_length"])
    keys = tuple(hash_key(h) for h in ids[: input_tokens // block_tokens])
    return SimRequest(
        request_id,
        values["timestamp"] / 1000.0,
        input_tokens,
        max(1, values["output_length"]),
        keys,
    )


def at_rate(requests: Sequence[SimRequest], rate_scale: float) -> list[SimRequest]:
    """The same requests arriving ``rate_scale`` times as fast (times divided by it)."""
    if rate_scale <= 0:
        raise ValueError(f"rate_scale must be > 0, got {rate_scale}")
    return [replace(r, arrival_s=r.arrival_s / rate_scale) for r in requests]


def arrival_rate(requests: Sequence[SimRequest]) -> float:
    """Requests per second over the replay's span (0 for fewer than two requests)."""
    if len(requests) < 2:
        return 0.0
    span = requests[-1].arrival_s - requests[0].arrival_s
    return (len(requests) - 1) / span if span > 0 else float("inf")


def synthetic(
    num_requests: int,
    *,
    rate_per_s: float,
    block_tokens: int,
    seed: int = 0,
    num_prefixes: int = 64,
    prefix_blocks: int = 8,
    suffix_blocks: int = 4,
    output_tokens: int = 256,
) -> list[SimRequest]:
    """Poisson arrivals at ``rate_per_s``; each prompt is one of ``num_prefixes`` shared
    prefixes (Zipf-like popularity) of ``prefix_blocks`` blocks, then a unique suffix of
    1..``suffix_blocks`` blocks and a partial block; outputs exponential around
    ``output_tokens``. Seeded: the same arguments give the same requests."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(num_prefixes)]
    next_id = num_prefixes * prefix_blocks
    now = 0.0
    requests: list[SimRequest] = []
    for request_id in range(num_requests):
        now += rng.expovariate(rate_per_s)
        group = rng.choices(range(num_prefixes), weights)[0]
        ids = [group * prefix_blocks + b for b in range(prefix_blocks)]
        num_suffix = rng.randint(1, suffix_blocks)
        ids += range(next_id, next_id + num_suffix)
        next_id += num_suffix
        input_tokens = len(ids) * block_tokens + rng.randint(1, block_tokens - 1 or 1)
        output = max(1, round(rng.expovariate(1.0 / output_tokens)))
        keys = tuple(hash_key(h) for h in ids)
        requests.append(SimRequest(request_id, now, input_tokens, output, keys))
    return requests
