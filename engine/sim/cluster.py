"""The described cluster: instances, each store node's tiers, the network, the router.

One TOML file, shaped like a real cluster's config where they overlap (``[store]``,
``[tiers.*]``, ``[engine]``, ``[router]`` keep the real keys' names and meanings)::

    [cluster]
    layout = "disaggregated"        # or "colocated" (vLLM-like: prefill + decode on one)
    num_prefill = 5                 # disaggregated
    num_decode = 3                  # disaggregated
    num_colocated = 0               # colocated
    profile = "llama3-70b-8xh100"   # a shipped profile name or a profile file
    host_cores = 0                  # > 0: every instance on one host of this many cores,
                                    # shared (processor sharing; engine.sim.host); 0: each
                                    # instance on hardware of its own
    host_busy_share = 0.0           # of those cores, what other processes on the host use
                                    # (measured); the instances share the rest
    host_pin_prefills = false       # prefill instance i on core i (mod host_cores), the
                                    # others on whichever core has fewest items; each core
                                    # shared by its own (as bench.router pins its workers)
    host_prefill_side_share = 0.0   # CPU the host's other processes (store nodes, RPCs,
                                    # the router) spend per core-second of a prefill pass,
                                    # run beside it on any core (measured)
    host_decode_side_share = 0.0    # the same per core-second of a batching step

    [store]
    block_tokens = 512              # tokens per block (the trace's block size)
    eviction_policy = "prefix_lru"  # lru | prefix_lru | lfu (kvstore.policy.eviction)
    shared = true                   # global store: a node reads blocks it lacks from peers
    promotion_min_hits = 1          # kvstore.policy.promotion; 0: never promote

    [tiers.hbm]                     # each store node (one per prefill/colocated instance)
    capacity_bytes = 200e9
    bandwidth_bytes_per_s = 1e12    # load bandwidth into the instance's KV cache
    [tiers.dram]
    [tiers.nvme]

    [network]                       # between nodes: peer reads and the prefill->decode hand-off
    bandwidth_bytes_per_s = 400e9   # e.g. 8 x 400 Gb/s RDMA per node (Mooncake)
    latency_s = 20e-6

    [engine]
    chunk_tokens = 2048             # colocated: prefill tokens per iteration (chunked prefill);
                                    # batched disaggregated prefill: per prompt per pass
    max_batch_tokens = 0            # > 0: a prefill instance computes several prompts per
                                    # pass, up to this many tokens (the bundled prefill
                                    # worker's engine.max_batch_tokens); 0: one at a time
    max_batch = 128                 # sequences per decode step
    kv_capacity_tokens = 1_000_000  # KV an instance holds for running sequences

    [router]
    policy = "cache_aware"          # cache_aware | round_robin | least_loaded | random
    ttft_slo_s = 0                  # > 0: early rejection above it (0: none)
    tbt_slo_s = 0
    balance_threshold = 1.25

Every key is optional (defaults below); an unknown section or key, or a bad value, is a
``ConfigError`` naming it. A tier with ``capacity_bytes = 0`` is absent.
"""

from __future__ import annotations

import enum
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from engine.router.policy import POLICY_NAMES
from kvstore.errors import ConfigError
from kvstore.types import TIERS_FASTEST_FIRST, EvictionPolicyKind, TierKind


class Layout(enum.Enum):
    DISAGGREGATED = "disaggregated"
    COLOCATED = "colocated"


@dataclass(frozen=True, slots=True)
class TierSpec:
    capacity_bytes: float = 0.0
    bandwidth_bytes_per_s: float = 1e12


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    layout: Layout = Layout.DISAGGREGATED
    num_prefill: int = 1
    num_decode: int = 1
    num_colocated: int = 2
    profile: str = "llama3-8b-h100"
    host_cores: int = 0
    host_busy_share: float = 0.0
    host_pin_prefills: bool = False
    host_prefill_side_share: float = 0.0
    host_decode_side_share: float = 0.0
    block_tokens: int = 512
    eviction_policy: EvictionPolicyKind = EvictionPolicyKind.PREFIX_LRU
    shared: bool = True
    promotion_min_hits: int = 1
    tiers: Mapping[TierKind, TierSpec] = field(
        default_factory=lambda: {
            TierKind.HBM: TierSpec(20e9, 1e12),
            TierKind.DRAM: TierSpec(200e9, 25e9),
            TierKind.NVME: TierSpec(0.0, 7e9),
        }
    )
    network_bytes_per_s: float = 400e9
    network_latency_s: float = 20e-6
    chunk_tokens: int = 2048
    max_batch_tokens: int = 0
    max_batch: int = 128
    kv_capacity_tokens: int = 400_000
    policy: str = "cache_aware"
    ttft_slo_s: float = 0.0
    tbt_slo_s: float = 0.0
    balance_threshold: float = 1.25

    @property
    def num_instances(self) -> int:
        if self.layout is Layout.COLOCATED:
            return self.num_colocated
        return self.num_prefill + self.num_decode

    def tier_blocks(self, tier: TierKind, kv_bytes_per_token: int) -> int:
        """Blocks of this cluster's block size a node's ``tier`` holds."""
        block_bytes = kv_bytes_per_token * self.block_tokens
        return int(self.tiers[tier].capacity_bytes // block_bytes)

    def with_tier(self, tier: TierKind, capacity_bytes: float) -> ClusterSpec:
        tiers = dict(self.tiers)
        tiers[tier] = replace(tiers[tier], capacity_bytes=capacity_bytes)
        return replace(self, tiers=tiers)


_SECTIONS: dict[str, dict[str, str]] = {  # TOML section -> key -> ClusterSpec field
    "cluster": {
        k: k
        for k in (
            "layout",
            "num_prefill",
            "num_decode",
            "num_colocated",
            "profile",
            "host_cores",
            "host_busy_share",
            "host_pin_prefills",
            "host_prefill_side_share",
            "host_decode_side_share",
        )
    },
    "store": {k: k for k in ("block_tokens", "eviction_policy", "shared", "promotion_min_hits")},
    "network": {"bandwidth_bytes_per_s": "network_bytes_per_s", "latency_s": "network_latency_s"},
    "engine": {
        k: k for k in ("chunk_tokens", "max_batch_tokens", "max_batch", "kv_capacity_tokens")
    },
    "router": {k: k for k in ("policy", "ttft_slo_s", "tbt_slo_s", "balance_threshold")},
}


def load_cluster(path: Path) -> ClusterSpec:
    """Raises ``ConfigError`` for an unreadable file or a bad key (named)."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read the cluster description: {exc}") from exc
    return parse_cluster(raw)


def parse_cluster(raw: Mapping[str, object]) -> ClusterSpec:
    """A ``ClusterSpec`` from parsed TOML (see the module docstring)."""
    defaults = ClusterSpec()
    values: dict[str, object] = {}
    for section, table in raw.items():
        if section == "tiers":
            values["tiers"] = _tiers(table, defaults)
            continue
        keys = _SECTIONS.get(section)
        if keys is None:
            known = sorted([*_SECTIONS, "tiers"])
            raise ConfigError(section, f"unknown section (sections: {known})")
        for key, value in _table(table, section).items():
            name = keys.get(key)
            if name is None:
                raise ConfigError(f"{section}.{key}", f"unknown key (keys: {sorted(keys)})")
            values[name] = _convert(f"{section}.{key}", getattr(defaults, name), value)
    spec = replace(defaults, **values)  # type: ignore[arg-type]
    _check(spec)
    return spec


def _table(value: object, key: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table")
    return value


def _tiers(table: object, defaults: ClusterSpec) -> dict[TierKind, TierSpec]:
    tiers = dict(defaults.tiers)
    names = {t.value: t for t in TIERS_FASTEST_FIRST}
    for name, spec in _table(table, "tiers").items():
        tier = names.get(name)
        if tier is None:
            raise ConfigError(f"tiers.{name}", f"unknown tier (tiers: {sorted(names)})")
        current = tiers[tier]
        for key, value in _table(spec, f"tiers.{name}").items():
            if key not in {f.name for f in fields(TierSpec)}:
                raise ConfigError(f"tiers.{name}.{key}", "unknown key")
            number = float(_convert(f"tiers.{name}.{key}", 0.0, value))  # type: ignore[arg-type]
            current = replace(current, **{key: number})
        tiers[tier] = current
    return tiers


def _convert(key: str, default: object, value: object) -> object:
    """``value`` as the type of ``default``, or a ``ConfigError`` naming ``key``."""
    if isinstance(default, enum.Enum):
        choices = {m.value: m for m in type(default)}
        if value not in choices:
            raise ConfigError(key, f"must be one of {sorted(choices)}, got {value!r}")
        return choices[value]
    if isinstance(default, bool | str):
        if type(value) is not type(default):
            raise ConfigError(key, f"must be a {type(default).__name__}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(key, f"must be a finite number >= 0, got {value!r}")
    if isinstance(default, int):
        if value != int(value):
            raise ConfigError(key, f"must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _check(spec: ClusterSpec) -> None:
    positive = {
        "store.block_tokens": spec.block_tokens,
        "engine.chunk_tokens": spec.chunk_tokens,
        "engine.max_batch": spec.max_batch,
        "engine.kv_capacity_tokens": spec.kv_capacity_tokens,
        "network.bandwidth_bytes_per_s": spec.network_bytes_per_s,
    }
    for tier, tier_spec in spec.tiers.items():
        positive[f"tiers.{tier.value}.bandwidth_bytes_per_s"] = tier_spec.bandwidth_bytes_per_s
    if spec.layout is Layout.COLOCATED:
        positive["cluster.num_colocated"] = spec.num_colocated
    else:
        positive["cluster.num_prefill"] = spec.num_prefill
        positive["cluster.num_decode"] = spec.num_decode
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(key, f"must be > 0, got {value}")
    if spec.host_busy_share >= 1:
        raise ConfigError("cluster.host_busy_share", "must be < 1 (a share of the host's cores)")
    if spec.policy not in POLICY_NAMES:
        raise ConfigError("router.policy", f"must be one of {list(POLICY_NAMES)}")
    if spec.balance_threshold < 1:
        raise ConfigError("router.balance_threshold", "must be >= 1")
