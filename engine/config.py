"""The engine's settings: the ``[engine]``, ``[prefill]``, ``[decode]`` and
``[router]`` sections of the one Strata config file (the store's sections are the
store's). Same rules as the store's
config: defaults < file < ``STRATA_ENGINE__MODEL``-style environment < ``--engine.model``
flags, each validated at start with an error naming the key.

Ports, chosen once for all roles on one host: the store 7600-7602, the prefill worker
7610, the decode worker 7620 (gRPC) and 7621 (its data plane), the router's HTTP 8000.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.dtypes import NAMES as DTYPE_NAMES
from engine.model.config import ModelConfig
from engine.router.views import PolicyName
from kvstore import config_loader
from kvstore.config import read_secret
from kvstore.config_loader import check, positive, size
from kvstore.errors import ConfigError
from kvstore.layout import BlockSpec, KVDtype

MiB = 1 << 20
_SALT_LABEL = b"strata.engine.namespace-salt.v1"
LOCAL = "local"
_PORT = check(lambda v: 0 <= v <= 65535, "0 to 65535")
STORE_SECTIONS = ("store", "tiers", "server", "metadata", "auth", "tls", "transfer")


@dataclass(frozen=True, slots=True)
class ModelSection:
    model: str = ""  # a Hugging Face checkpoint folder; empty: the tiny built-in model
    dtype: str = field(  # empty: the checkpoint's own
        default="",
        metadata=check(lambda v: v in ("", *DTYPE_NAMES), "empty or " + ", ".join(DTYPE_NAMES)),
    )
    device: str = "cpu"
    store: str = "embedded"  # "embedded", a store node's HOST:PORT, or "none"
    store_bytes: int = field(default=512 * MiB, metadata=size())  # an embedded node's DRAM
    kv_cache_bytes: int = field(default=256 * MiB, metadata=size())
    page_tokens: int = field(default=16, metadata=positive())
    chunk_tokens: int = field(default=512, metadata=positive())  # prefill chunk per prompt
    max_batch_tokens: int = field(default=2048, metadata=positive())  # per prefill pass
    max_batch: int = field(default=32, metadata=positive())  # requests per decode step
    prefix_caching: bool = True
    token: str = ""  # cluster token: the store's and the workers' data planes
    # the deployment's secret namespace salt (see namespace_salt); a file keeps it off argv
    salt: str = ""
    salt_file: Path | None = None
    threads: int = field(default=0, metadata=check(lambda v: v >= 0, "0 (all cores) or more"))

    def page_spec(self, model: ModelConfig) -> BlockSpec:
        """One KV page of ``model`` in this section's dtype (else the checkpoint's): the
        store block a page is, byte for byte."""
        dtype = KVDtype(self.dtype or model.torch_dtype)
        return BlockSpec(
            model.num_layers, model.num_kv_heads, model.head_dim, dtype, self.page_tokens
        )

    @property
    def model_path(self) -> Path | None:
        return Path(self.model).expanduser() if self.model else None

    @property
    def store_address(self) -> str | None:
        return None if self.store == "none" else self.store

    @property
    def namespace_salt(self) -> str:
        """The salt of the engine's namespace, which makes its block keys unguessable to
        anyone without it: ``salt``, else ``salt_file``'s first line, else derived from
        the cluster ``token`` (every process holding it agrees; nobody else can compute
        it), else none (``kvengine up`` sets a random one for its processes)."""
        if self.salt:
            return self.salt
        if self.salt_file is not None:
            return read_secret(self.salt_file, "engine.salt_file")
        if self.token:
            return hmac.new(self.token.encode(), _SALT_LABEL, hashlib.sha256).hexdigest()
        return ""


@dataclass(frozen=True, slots=True)
class PrefillSection:
    host: str = "127.0.0.1"
    port: int = field(default=7610, metadata=_PORT)


@dataclass(frozen=True, slots=True)
class DecodeSection:
    host: str = "127.0.0.1"
    port: int = field(default=7620, metadata=_PORT)
    data_port: int = field(default=7621, metadata=_PORT)
    prefill: str = "127.0.0.1:7610"  # prefill workers' addresses, comma-separated; "local":
    # prefill in this process (colocated)
    prefill_timeout_s: float = field(default=120.0, metadata=positive())
    # how long a request waits for room in the KV cache (its prompt and max_tokens)
    # before it is refused as overloaded
    page_wait_s: float = field(default=30.0, metadata=positive())

    @property
    def prefill_addresses(self) -> list[str]:
        return [a.strip() for a in self.prefill.split(",") if a.strip()]


@dataclass(frozen=True, slots=True)
class RouterSection:
    host: str = "127.0.0.1"
    port: int = field(default=8000, metadata=_PORT)  # the HTTP endpoint
    prefill: str = "127.0.0.1:7610"  # prefill workers, comma-separated
    decode: str = "127.0.0.1:7620"  # decode workers, comma-separated
    policy: PolicyName = PolicyName.CACHE_AWARE
    ttft_slo_s: float = field(default=0.0, metadata=check(lambda v: v >= 0, "0 (none) or more"))
    tbt_slo_s: float = field(default=0.0, metadata=check(lambda v: v >= 0, "0 (none) or more"))
    balance_threshold: float = field(default=1.25, metadata=positive())
    api_key: str = ""  # clients must send it as a bearer token; empty: open
    api_keys_file: Path | None = None  # more keys, one per line (one per tenant)
    salt_by_api_key: bool = False  # each API key reuses only its own requests' KV
    model_name: str = ""  # what clients call the model; default: the checkpoint folder name
    cost_model: str = ""  # a fitted cost model (JSON); empty: profile the workers at start
    lookup_timeout_s: float = field(default=0.02, metadata=positive())
    health_interval_s: float = field(default=1.0, metadata=positive())
    max_concurrency: int = field(default=256, metadata=positive())  # requests in flight
    access_log: bool = True  # an INFO line per request and a periodic throughput line
    log_interval_s: float = field(default=10.0, metadata=positive())  # throughput line
    # vLLM OpenAI servers, comma-separated, each HOST:PORT=STORE_HOST:PORT (the store node
    # its Strata connector uses); set: the router fronts them instead of the workers above
    vllm: str = ""
    vllm_model_id: str = ""  # the connector's model_id, if set there; empty: the model path

    @property
    def vllm_servers(self) -> list[tuple[str, str]]:
        """``vllm`` as (server address, store node address) pairs.

        Raises:
            ConfigError: an entry that is not ``HOST:PORT=HOST:PORT``, or a server twice.
        """
        pairs: list[tuple[str, str]] = []
        for entry in (e.strip() for e in self.vllm.split(",")):
            if not entry:
                continue
            server, _, store = (part.strip() for part in entry.partition("="))
            if not _is_address(server) or not _is_address(store):
                raise ConfigError(
                    "router.vllm", f"{entry!r}: expected SERVER_HOST:PORT=STORE_HOST:PORT"
                )
            pairs.append((server, store))
        servers = [server for server, _ in pairs]
        if len(set(servers)) != len(servers):
            raise ConfigError("router.vllm", "a server is named twice")
        return pairs

    @property
    def prefill_addresses(self) -> list[str]:
        return [a.strip() for a in self.prefill.split(",") if a.strip()]

    @property
    def api_keys(self) -> tuple[str, ...]:
        """``api_key`` and the lines of ``api_keys_file`` (empty: the API is open)."""
        keys = [self.api_key] if self.api_key else []
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text().splitlines()
            except OSError as exc:
                raise ConfigError("router.api_keys_file", f"cannot read it: {exc}") from None
            keys += [line.strip() for line in lines if line.strip()]
        return tuple(keys)

    @property
    def decode_addresses(self) -> list[str]:
        return [a.strip() for a in self.decode.split(",") if a.strip()]


def _is_address(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) <= 65535


@dataclass(frozen=True, slots=True)
class EngineConfig:
    engine: ModelSection = field(default_factory=ModelSection)
    prefill: PrefillSection = field(default_factory=PrefillSection)
    decode: DecodeSection = field(default_factory=DecodeSection)
    router: RouterSection = field(default_factory=RouterSection)


def load_engine_config(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> EngineConfig:
    env = os.environ if env is None else env
    if file is None and env.get("STRATA_CONFIG"):
        file = Path(env["STRATA_CONFIG"])
    return config_loader.load(
        EngineConfig, file=file, env=env, overrides=overrides, others=STORE_SECTIONS
    )


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    config_loader.add_flags(parser, EngineConfig)


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    return load_engine_config(args.config, overrides=config_loader.flag_overrides(args))
