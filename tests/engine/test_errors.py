"""The engine's exception tree: every error it raises on purpose is an ``EngineError``,
and none of them pretends to be a store error."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import engine
from engine.errors import EngineError
from engine.model.loader import ModelLoadError, load_model
from kvstore.errors import KVStoreError


def _engine_exceptions() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for module in pkgutil.walk_packages(engine.__path__, "engine."):
        if module.name == "engine.__main__":
            continue
        loaded = importlib.import_module(module.name)
        for _, value in inspect.getmembers(loaded, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.name:
                found.append(value)
    return found


def test_every_engine_exception_sits_under_the_root() -> None:
    exceptions = _engine_exceptions()
    assert len(exceptions) >= 10  # the walk found the engine's modules
    stray = [
        f"{e.__module__}.{e.__qualname__}" for e in exceptions if not issubclass(e, EngineError)
    ]
    assert not stray


def test_no_engine_exception_is_a_store_error() -> None:
    assert not [e for e in _engine_exceptions() if issubclass(e, KVStoreError)]


def test_a_checkpoint_that_cannot_load_is_an_engine_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(tmp_path / "missing")
    assert isinstance(info.value, EngineError)
    assert isinstance(info.value, ValueError)  # bad input, as before
    assert not isinstance(info.value, KVStoreError)
