"""The vLLM connector's settings: ``kv_connector_extra_config``, ``kv_role`` and the KV
cache vLLM allocated, read into Strata's terms (a store address, deadlines, what the
instance does with the store, a ``Namespace``).

Plain values in, a frozen ``ConnectorSettings`` out: no vLLM import, so it is checked
without vLLM installed. Every refusal is a ``ConfigError`` naming the setting.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from kvstore.errors import ConfigError, InvalidArgument
from kvstore.hashing import Namespace
from kvstore.layout import BlockSpec, KVDtype

_KNOWN = {"store", "model_id", "token", "lookup_timeout_s", "timeout_s", "retry_after_s"}


class KVRole(enum.Enum):
    """What an instance does with the store (vLLM's ``kv_role``). In disaggregated
    serving a prefill instance produces a prompt's KV and a decode instance consumes it:
    a producer never looks the store up (it computes every prompt, so that its saves are
    whole), a consumer never saves (what it computes is not worth the store's bytes)."""

    PRODUCER = "kv_producer"  # saves, never loads
    CONSUMER = "kv_consumer"  # loads, never saves
    BOTH = "kv_both"  # loads what the store holds, saves what it computes

    @property
    def loads(self) -> bool:
        return self is not KVRole.PRODUCER

    @property
    def saves(self) -> bool:
        return self is not KVRole.CONSUMER


@dataclass(frozen=True, slots=True)
class ConnectorSettings:
    store: str  # HOST:PORT of the store node
    role: KVRole = KVRole.BOTH
    token: str = ""  # bearer token, when the node checks rights
    lookup_timeout_s: float = 0.5  # the scheduler never waits longer for a lookup
    timeout_s: float = 5.0  # every other store call
    retry_after_s: float = 5.0  # after a failure, the store is left alone this long


def settings_from_extra(
    extra: Mapping[str, object] | None, kv_role: str | None = KVRole.BOTH.value
) -> ConnectorSettings:
    """``kv_connector_extra_config`` and vLLM's ``kv_role`` -> settings.

    Raises:
        ConfigError: no ``store``, an unknown key, a value of the wrong kind, or a
            ``kv_role`` that is none of ``KVRole``'s.
    """
    try:
        role = KVRole(kv_role)
    except ValueError:
        known = [r.value for r in KVRole]
        message = f"one of {known}, got {kv_role!r}"
        raise ConfigError("kv_transfer_config.kv_role", message) from None
    extra = dict(extra or {})
    unknown = sorted(set(extra) - _KNOWN)
    if unknown:
        raise ConfigError(
            "kv_connector_extra_config", f"unknown keys {unknown}; known: {sorted(_KNOWN)}"
        )
    store = extra.get("store")
    if not isinstance(store, str) or ":" not in store:
        raise ConfigError("kv_connector_extra_config.store", f"HOST:PORT expected, got {store!r}")
    token = extra.get("token", "")
    if not isinstance(token, str):
        raise ConfigError("kv_connector_extra_config.token", "a string expected")
    return ConnectorSettings(
        store=store,
        role=role,
        token=token,
        lookup_timeout_s=_seconds(extra, "lookup_timeout_s", 0.5),
        timeout_s=_seconds(extra, "timeout_s", 5.0),
        retry_after_s=_seconds(extra, "retry_after_s", 5.0),
    )


def namespace_for(
    model_id: str,
    *,
    num_layers: int,
    num_kv_heads: int,
    head_size: int,
    head_size_v: int,
    dtype: torch.dtype,
    block_size: int,
) -> Namespace:
    """The namespace of a vLLM instance's blocks: its model, its attention layers' shape
    and dtype, vLLM's block size. The bytes are stored in Strata's block layout whatever
    vLLM's own layout is, so instances with different attention backends share blocks.

    Raises:
        ConfigError: a cache the store's block layout cannot hold (K and V of different
            widths, a dtype the store lacks).
    """
    if head_size != head_size_v:
        raise ConfigError(
            "kv_transfer_config", f"K and V head sizes differ ({head_size}, {head_size_v})"
        )
    try:
        kv_dtype = KVDtype.of(dtype)
        spec = BlockSpec(num_layers, num_kv_heads, head_size, kv_dtype, block_size)
    except InvalidArgument as exc:
        raise ConfigError("kv_transfer_config", str(exc)) from exc
    return Namespace(model_id, spec)


def _seconds(extra: Mapping[str, object], key: str, default: float) -> float:
    value = extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"kv_connector_extra_config.{key}", f"positive seconds, got {value!r}")
    return float(value)
