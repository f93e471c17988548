"""Layered loading of frozen, nested config dataclasses.

Precedence, lowest first: field defaults, a TOML file, environment variables, CLI flags.
Every key has one dotted name used everywhere::

    TOML            [tiers.dram]
                    capacity_bytes = "4GiB"
    environment     STRATA_TIERS__DRAM__CAPACITY_BYTES=4GiB
    flag            --tiers.dram.capacity_bytes 4GiB

Values are converted by the field's annotation (bool, int, float, str, Path, Enum,
``X | None``); ``int`` fields whose metadata says ``unit="bytes"`` also take sizes like
``512MiB`` or ``4GB``. Field metadata ``check`` is a predicate with a message; a failed
conversion or check raises ``ConfigError`` naming the key and what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import re
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kvstore.errors import ConfigError

ENV_PREFIX = "STRATA_"
T = TypeVar("T")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def check(predicate: Callable[[Any], bool], allowed: str, **extra: Any) -> dict[str, Any]:
    """Field metadata: ``predicate`` must hold; ``allowed`` says what is allowed."""
    return {"check": (predicate, allowed), **extra}


def positive(**extra: Any) -> dict[str, Any]:
    return check(lambda v: v > 0, "a positive number", **extra)


def size(**extra: Any) -> dict[str, Any]:
    return positive(unit="bytes", **extra)


def parse_size(text: str) -> int:
    """``"4GiB"`` -> 4294967296. Binary multiples whatever the spelling (GB = GiB)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    number, unit = match.groups()
    multiplier = _UNITS[(unit or "")[:1].upper()]
    return int(float(number) * multiplier)


def load(
    cls: type[T],
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
    others: Collection[str] = (),
) -> T:
    """Build ``cls`` from defaults, then ``file``, ``env`` and ``overrides`` on top.

    ``others`` are top-level sections that other programs read from the same file and
    environment: skipped here, where any other unknown key is an error."""
    layered: dict[str, Any] = {}
    if file is not None:
        layered.update(_flatten(_read_toml(file)))
    layered.update(_from_env(env or {}))
    for key in [k for k in layered if k.split(".", 1)[0] in others]:
        del layered[key]
    layered.update(overrides or {})
    known = dict(_fields(cls))
    for key in layered:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(key, f"unknown key{suggestion}")
    return _build(cls, "", layered)


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--dotted.key VALUE`` flag per config key, plus ``--config PATH``."""
    group = parser.add_argument_group("configuration (each also STRATA_<KEY> in the environment)")
    group.add_argument("--config", type=Path, default=None, help="TOML config file")
    for key, f in _fields(cls):
        group.add_argument(f"--{key}", dest=f"cfg:{key}", default=None, metavar=f.name.upper())


def flag_overrides(args: argparse.Namespace) -> dict[str, str]:
    prefix = "cfg:"
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix) and v}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "__").upper()


def as_dict(config: Any) -> dict[str, Any]:
    """Effective config as plain values (enums by value, paths as strings)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = as_dict(value)
        elif isinstance(value, enum.Enum):
            out[f.name] = value.value
        elif isinstance(value, Path):
            out[f.name] = str(value)
        else:
            out[f.name] = value
    return out


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(file.read_text())
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {file}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{file} is not valid TOML: {exc}") from exc


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            yield from _flatten(value, key + ".")
        else:
            yield key, value


def _from_env(env: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and "__" in name:
            yield name[len(ENV_PREFIX) :].lower().replace("__", "."), value


def _fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any]]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _fields(typing.cast(type, hint), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def _build(cls: type[T], prefix: str, values: Mapping[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(typing.cast(Any, cls)):
        key, hint = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(typing.cast(type, hint), key + ".", values)
        elif key in values:
            kwargs[f.name] = _convert(key, values[key], hint, f.metadata)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(prefix.rstrip(".") or cls.__name__, str(exc)) from exc


def _convert(key: str, raw: Any, hint: Any, metadata: Mapping[str, Any]) -> Any:
    try:
        value = _coerce(raw, hint, metadata)
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, f"{raw!r} is not {_describe(hint, metadata)}") from exc
    if value is not None and "check" in metadata:
        predicate, allowed = metadata["check"]
        if not predicate(value):
            raise ConfigError(key, f"{raw!r} is not allowed; expected {allowed}")
    return value


def _coerce(raw: Any, hint: Any, metadata: Mapping[str, Any]) -> Any:
    if isinstance(hint, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if isinstance(raw, str) and raw.strip().lower() in ("", "none"):
            return None
        return _coerce(raw, args[0], metadata)
    if hint is bool:
        return _to_bool(raw)
    if hint is int:
        if isinstance(raw, bool):
            raise TypeError("a bool is not an int")
        if isinstance(raw, str) and metadata.get("unit") == "bytes":
            return parse_size(raw)
        if isinstance(raw, float) and not raw.is_integer():
            raise ValueError("not a whole number")
        return int(raw)
    if hint is float:
        if isinstance(raw, bool):
            raise TypeError("a bool is not a number")
        return float(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise TypeError("not a string")
        return raw
    if hint is Path:
        return Path(str(raw)).expanduser()
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(str(raw).lower())
    raise TypeError(f"unsupported config type {hint!r}")


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")


def _describe(hint: Any, metadata: Mapping[str, Any]) -> str:
    if isinstance(hint, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _describe(args[0], metadata) + " (or empty for none)"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in hint)
    if hint is int and metadata.get("unit") == "bytes":
        return "a size in bytes (e.g. 4096, 512MiB, 4GiB)"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, "a path" if hint is Path else str(hint))
