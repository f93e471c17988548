"""Strata's configuration: one frozen tree, validated at load, overridable key by key.

Defaults serve a single machine with no file at all: a 1 GiB DRAM tier, no NVMe (it
needs a directory), no HBM (it needs CUDA), embedded metadata, the store's gRPC API on
127.0.0.1:7600 and its Prometheus metrics on 7601, no authentication, no TLS. See
``config_loader`` for how a file, ``STRATA_*`` environment variables and flags layer on
top; ``kvstore config`` prints the effective values.
"""

from __future__ import annotations

import argparse
import enum
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from kvstore import config_loader
from kvstore.access import Access
from kvstore.buffers import align_up
from kvstore.config_loader import check, positive, size
from kvstore.errors import ConfigError
from kvstore.types import AdmissionPolicyKind, EvictionPolicyKind

GiB = 1 << 30
MiB = 1 << 20
DEFAULT_PAGE_BYTES = 64 * MiB


def _node_id_ok(value: str) -> bool:
    return bool(value) and all(c.isalnum() or c in "-_." for c in value)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    node_id: str = field(
        default_factory=socket.gethostname,
        metadata=check(_node_id_ok, "letters, digits, '-', '_' or '.'"),
    )
    block_bytes: int = field(default=16 * MiB, metadata=size())  # the largest block accepted
    page_bytes: int = field(default=DEFAULT_PAGE_BYTES, metadata=size())  # carved by size class
    eviction_policy: EvictionPolicyKind = EvictionPolicyKind.PREFIX_LRU
    admission_policy: AdmissionPolicyKind = AdmissionPolicyKind.ALL
    admission_window_blocks: int = field(default=1_000_000, metadata=positive())  # doorkeepers
    promotion_min_hits: int = field(
        default=2, metadata=check(lambda v: v >= 0, "0 (never promote) or more")
    )
    reservation_timeout_s: float = field(default=30.0, metadata=positive())
    eviction_budget_blocks: int = field(default=1024, metadata=positive())
    removal_record_blocks: int = field(default=100_000, metadata=positive())
    default_pin_ttl_s: float = field(default=600.0, metadata=positive())
    staging_bytes: int = field(default=256 * MiB, metadata=size())  # reusable bounce buffers
    max_namespaces: int = field(default=256, metadata=positive())  # RegisterNamespace refuses more
    max_model_id_bytes: int = field(default=256, metadata=positive())  # also bounds the salt


@dataclass(frozen=True, slots=True)
class HbmConfig:
    enabled: bool = False
    capacity_bytes: int = field(default=GiB, metadata=size())
    device: str = "cuda:0"


@dataclass(frozen=True, slots=True)
class DramConfig:
    enabled: bool = True
    capacity_bytes: int = field(default=GiB, metadata=size())
    shm_dir: Path = Path("/dev/shm")
    pin_memory: bool = True


@dataclass(frozen=True, slots=True)
class NvmeConfig:
    enabled: bool = False
    path: Path | None = None
    capacity_bytes: int = field(default=8 * GiB, metadata=size())
    slab_bytes: int = field(default=GiB, metadata=size())
    direct_io: bool | None = None  # None: use O_DIRECT where the filesystem supports it
    fsync: bool = False
    io_threads: int = field(default=4, metadata=check(lambda v: 1 <= v <= 64, "1 to 64"))
    write_through: bool = False  # every committed block also gets an NVMe copy at once


@dataclass(frozen=True, slots=True)
class TiersConfig:
    hbm: HbmConfig = field(default_factory=HbmConfig)
    dram: DramConfig = field(default_factory=DramConfig)
    nvme: NvmeConfig = field(default_factory=NvmeConfig)

    def __post_init__(self) -> None:
        if not (self.hbm.enabled or self.dram.enabled or self.nvme.enabled):
            raise ConfigError("tiers", "enable at least one of hbm, dram and nvme")
        if self.nvme.enabled and self.nvme.path is None:
            raise ConfigError("tiers.nvme.path", "required when tiers.nvme.enabled is true")
        if self.nvme.write_through and not self.nvme.enabled:
            raise ConfigError("tiers.nvme.write_through", "needs tiers.nvme.enabled = true")


class MetadataBackend(enum.Enum):
    MEMORY = "memory"
    REDIS = "redis"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = field(default=7600, metadata=check(lambda v: 0 <= v <= 65535, "0 to 65535"))
    advertise_address: str = ""  # how peers and clients reach this node; default host:port
    metrics_enabled: bool = True
    metrics_port: int = field(default=7601, metadata=check(lambda v: 0 <= v <= 65535, "0 to 65535"))
    metrics_max_namespaces: int = field(default=32, metadata=positive())  # labelled; rest summed
    chunk_bytes: int = field(default=2 * MiB, metadata=size())  # streamed data message size
    tune_malloc: bool = True  # keep freed large buffers mapped (see kvstore.malloc)
    grace_s: float = field(default=5.0, metadata=positive())  # drain time at shutdown
    peer_fetch: bool = True  # read blocks held by other nodes through this one
    cache_peer_reads: bool = True  # keep a copy of blocks fetched from peers
    peer_timeout_s: float = field(default=5.0, metadata=positive())


@dataclass(frozen=True, slots=True)
class TransferConfig:
    enabled: bool = True
    hosts: str = (
        ""  # data-plane listen addresses, comma-separated (one per NIC); default: server.host
    )
    port: int = field(default=7602, metadata=check(lambda v: 0 <= v <= 65535, "0 to 65535"))
    host_id: str = ""  # machine identity for choosing shm; default: the kernel's boot id
    stripes: int = field(default=4, metadata=check(lambda v: 1 <= v <= 64, "1 to 64"))
    threads: int = field(default=8, metadata=check(lambda v: 1 <= v <= 256, "1 to 256"))
    timeout_s: float = field(default=10.0, metadata=positive())
    lease_ttl_s: float = field(default=10.0, metadata=positive())
    tls: bool = False  # also encrypt the data plane (needs tls.enabled's certificate)
    shm: bool = True  # read same-host peers through shared memory
    probe_bytes: int = field(default=4 * MiB, metadata=size())  # link measurement size
    probe_interval_s: float = field(default=30.0, metadata=positive())
    idle_timeout_s: float = field(default=300.0, metadata=positive())  # per request, idle included
    max_connections_per_peer: int = field(default=256, metadata=positive())

    @property
    def host_list(self) -> list[str]:
        return [h.strip() for h in self.hosts.split(",") if h.strip()]


@dataclass(frozen=True, slots=True)
class MetadataConfig:
    backend: MetadataBackend = MetadataBackend.MEMORY
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "strata"
    timeout_s: float = field(default=1.0, metadata=positive())
    node_ttl_s: float = field(default=5.0, metadata=check(lambda v: 0 < v <= 60, "0 to 60"))
    heartbeat_interval_s: float = field(default=1.0, metadata=positive())
    publish_interval_s: float = field(default=0.05, metadata=positive())


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Tokens (see ``kvstore.access`` for what each grants). Each may instead come from
    a file (``*_file``: its first line) or the environment (``STRATA_AUTH__TOKEN``), so
    that it never appears on a command line. A writer or reader token needs an admin
    token of its own: no store token ever grants admin powers."""

    token: str = ""  # writer: prefill workers, engines, peers; empty: store calls are open
    admin_token: str = ""  # admin calls; empty: only allowed when no other token is set
    reader_token: str = ""  # read-only store calls (needs token too)
    token_file: Path | None = None
    admin_token_file: Path | None = None
    reader_token_file: Path | None = None

    def __post_init__(self) -> None:
        for name in ("token", "admin_token", "reader_token"):
            file = getattr(self, f"{name}_file")
            if file is not None:
                if getattr(self, name):
                    raise ConfigError(f"auth.{name}_file", f"set auth.{name} or this, not both")
                object.__setattr__(self, name, read_secret(file, f"auth.{name}_file"))
        if (self.token or self.reader_token) and not self.admin_token:
            raise ConfigError(
                "auth.admin_token",
                "required when auth.token or auth.reader_token is set"
                " (a store token must not grant admin powers)",
            )
        if self.reader_token and not self.token:
            raise ConfigError("auth.reader_token", "needs auth.token (the writers') as well")
        tokens = [t for t in (self.token, self.admin_token, self.reader_token) if t]
        if len(set(tokens)) < len(tokens):
            raise ConfigError("auth", "token, admin_token and reader_token must differ")

    @property
    def access(self) -> Access:
        return Access(self.admin_token, self.token, self.reader_token)


def read_secret(file: Path, key: str) -> str:
    """The first line of ``file``, stripped (a token or a salt kept out of argv)."""
    try:
        secret = file.read_text().splitlines()[0].strip() if file.stat().st_size else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read {file}: {exc}") from None
    if not secret:
        raise ConfigError(key, f"{file} is empty")
    return secret


@dataclass(frozen=True, slots=True)
class TlsConfig:
    enabled: bool = False
    cert_file: Path | None = None  # server certificate (PEM)
    key_file: Path | None = None  # server private key (PEM)
    ca_file: Path | None = None  # what clients and peers trust (PEM); default: cert_file

    def __post_init__(self) -> None:
        if self.enabled and (self.cert_file is None or self.key_file is None):
            raise ConfigError("tls", "tls.cert_file and tls.key_file are required when enabled")


@dataclass(frozen=True, slots=True)
class Config:
    store: StoreConfig = field(default_factory=StoreConfig)
    tiers: TiersConfig = field(default_factory=TiersConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def __post_init__(self) -> None:
        largest_slot = align_up(self.store.block_bytes)
        if self.store.page_bytes < largest_slot:
            raise ConfigError(
                "store.page_bytes",
                f"{self.store.page_bytes} holds no block of store.block_bytes"
                f" = {self.store.block_bytes} (raise it, or lower store.block_bytes)",
            )
        for name in ("hbm", "dram", "nvme"):
            tier = getattr(self.tiers, name)
            if tier.enabled and tier.capacity_bytes < largest_slot:
                raise ConfigError(
                    f"tiers.{name}.capacity_bytes",
                    f"{tier.capacity_bytes} holds no block of store.block_bytes"
                    f" = {self.store.block_bytes}",
                )
        if self.transfer.tls and not self.tls.enabled:
            raise ConfigError("transfer.tls", "needs tls.enabled (and its certificate)")
        if self.metadata.heartbeat_interval_s * 2 > self.metadata.node_ttl_s:
            raise ConfigError(
                "metadata.heartbeat_interval_s",
                f"must be at most half of metadata.node_ttl_s ({self.metadata.node_ttl_s})",
            )

    def redacted(self) -> dict[str, object]:
        """The effective values with secrets replaced, for display and the admin API."""
        values = config_loader.as_dict(self)
        auth = values["auth"]
        assert isinstance(auth, dict)
        for name in ("token", "admin_token", "reader_token"):
            auth[name] = "<set>" if auth[name] else ""
        metadata = values["metadata"]
        assert isinstance(metadata, dict)
        metadata["redis_url"] = redact_url(str(metadata["redis_url"]))
        return values


def redact_url(url: str) -> str:
    """``url`` with any password replaced (``redis://:secret@host`` -> ``redis://:***@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# sections of the shared config file that the engine's programs read, not the store
OTHER_ROLES = ("engine", "prefill", "decode", "router")


def load_config(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Config:
    """The effective config: defaults < ``file`` (or $STRATA_CONFIG) < env < overrides."""
    env = os.environ if env is None else env
    if file is None and env.get("STRATA_CONFIG"):
        file = Path(env["STRATA_CONFIG"])
    return config_loader.load(Config, file=file, env=env, overrides=overrides, others=OTHER_ROLES)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    config_loader.add_flags(parser, Config)


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, overrides=config_loader.flag_overrides(args))
