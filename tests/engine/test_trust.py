"""The engine's side of trust: a secret namespace salt by default, API keys compared in
constant time (several keys, one per tenant), and cache salts by API key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from engine.config import load_engine_config
from engine.router.api import create_app
from kvstore.errors import ConfigError


def test_the_namespace_salt_is_set_or_derived_from_the_cluster_token(tmp_path: Path) -> None:
    def salt(**overrides: str) -> str:
        return load_engine_config(env={}, overrides=overrides).engine.namespace_salt

    assert salt() == ""  # kvengine up sets a random one for its processes
    assert salt(**{"engine.salt": "s3cret"}) == "s3cret"
    (tmp_path / "salt").write_text("from-file\n")
    assert salt(**{"engine.salt_file": str(tmp_path / "salt")}) == "from-file"
    derived = salt(**{"engine.token": "cluster-token"})
    assert len(derived) == 64 and "cluster-token" not in derived
    assert derived == salt(**{"engine.token": "cluster-token"})  # every process agrees
    assert derived != salt(**{"engine.token": "another-token"})


def _app(tmp_path: Path, **overrides: str) -> httpx.AsyncClient:
    (tmp_path / "keys").write_text("tenant-a-key\n\ntenant-b-key\n")
    section = load_engine_config(
        env={}, overrides={"router.api_keys_file": str(tmp_path / "keys"), **overrides}
    ).router

    async def never() -> None:
        await asyncio.Event().wait()

    app = create_app(never, api_keys=section.api_keys, salt_by_api_key=section.salt_by_api_key)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_any_configured_api_key_is_admitted(tmp_path: Path) -> None:
    async with _app(tmp_path, **{"router.api_key": "admin-key"}) as http:
        for key in ("admin-key", "tenant-a-key", "tenant-b-key"):
            reply = await http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert reply.status_code == 503  # admitted; the router is still starting
        for headers in ({}, {"Authorization": "Bearer tenant-c-key"}, {"Authorization": "x"}):
            assert (await http.get("/v1/models", headers=headers)).status_code == 401


def test_an_unreadable_keys_file_names_the_key(tmp_path: Path) -> None:
    section = load_engine_config(
        env={}, overrides={"router.api_keys_file": str(tmp_path / "missing")}
    ).router
    with pytest.raises(ConfigError, match=r"router\.api_keys_file"):
        _ = section.api_keys
