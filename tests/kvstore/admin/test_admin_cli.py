"""``kvstore admin`` against a real node process: tables for people, JSON for scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.client import SyncStoreClient
from kvstore.hashing import Namespace, prefix_keys
from tests.conftest import BLOCK, NAMESPACE, block_bytes
from tests.processes import ROOT, ServeProcess

PROMPT = "You are a helpful assistant. Answer briefly. " * 2  # 90 bytes: 5 blocks of 16


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    flags = {"store.block_bytes": str(BLOCK), "tiers.dram.capacity_bytes": str(64 * BLOCK)}
    with ServeProcess(**flags) as process:
        with SyncStoreClient(process.address) as client:
            ns = client.register_namespace(NAMESPACE)
            from kvstore.hashing import prefix_keys

            keys = prefix_keys(ns, list(PROMPT.encode()), 16)
            client.put(ns, keys[:3], [block_bytes(i) for i in range(3)])
            client.get(ns, keys)  # 3 hits, 2 misses
        yield process


def admin(server: ServeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", "admin", "--address", server.address, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def admin_json(server: ServeProcess, *args: str) -> object:
    result = admin(server, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_stats(server: ServeProcess) -> None:
    stats = admin_json(server, "stats")
    assert isinstance(stats, dict)
    assert stats["hit_blocks"] == 3 and stats["miss_blocks"] == 2
    assert stats["hit_rate"] == pytest.approx(0.6) and stats["tokens_saved"] == 48
    assert stats["miss_reasons"] == {"never_stored": 2}
    (tier,) = stats["tiers"]
    assert tier["tier"] == "dram" and tier["used_bytes"] == 3 * BLOCK and tier["hit_blocks"] == 3
    table = admin(server, "stats")
    assert table.returncode == 0 and "60.0%" in table.stdout and "never_stored" in table.stdout


def test_nodes(server: ServeProcess) -> None:
    (node,) = admin_json(server, "nodes")  # type: ignore[misc]
    assert node["address"] == server.address and not node["degraded"]
    assert len(node["data_addresses"]) == 1
    assert "dram" in admin(server, "nodes").stdout


def test_topology(server: ServeProcess) -> None:
    topology = admin_json(server, "topology")
    assert isinstance(topology, dict)
    (addresses,) = topology["data_addresses"].values()
    assert addresses[0].startswith("127.0.0.1:") and topology["links"] == []  # alone
    assert "data planes" in admin(server, "topology").stdout


def test_lookup_pin_unpin_from_text_and_token_file(server: ServeProcess, tmp_path: Path) -> None:
    found = admin_json(server, "lookup", "--text", PROMPT)
    assert isinstance(found, dict)
    assert found["num_blocks"] == 5 and found["nodes"][0]["blocks"] == 3
    assert found["nodes"][0]["tokens"] == 48 and found["nodes"][0]["tiers"] == {"dram": 3}
    tokens = tmp_path / "prompt.json"
    tokens.write_text(json.dumps(list(PROMPT.encode())))
    assert admin_json(server, "lookup", "--tokens", str(tokens))["nodes"] == found["nodes"]  # type: ignore[index]
    assert admin_json(server, "pin", "--text", PROMPT, "--ttl", "60") == {
        "verb": "pin",
        "blocks": 3,
        "of": 5,
    }
    assert admin_json(server, "unpin", "--text", PROMPT)["blocks"] == 3  # type: ignore[index]
    assert "cached blocks" in admin(server, "lookup", "--text", PROMPT).stdout


def test_evict_flush_config_top(server: ServeProcess) -> None:
    assert admin_json(server, "evict", "--tier", "dram", "--blocks", "1") == {"blocks": 1}
    assert admin_json(server, "flush") == {"blocks": 2}
    config = admin_json(server, "config")
    assert isinstance(config, dict) and config["store"]["block_bytes"] == BLOCK
    top = admin(server, "top", "--interval", "0.2", "--count", "1")
    assert top.returncode == 0 and "strata top" in top.stdout


def test_clear_errors(server: ServeProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 three")
    result = admin(server, "lookup", "--tokens", str(bad))
    assert result.returncode == 2 and "not a list of integers" in result.stderr
    result = admin(server, "lookup", "--text", "x", "--model-id", "nope")
    assert result.returncode == 2 and "no namespace matches" in result.stderr
    unreachable = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvstore.cli",
            "admin",
            "--address",
            "127.0.0.1:1",
            "--timeout",
            "1",
            "stats",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert unreachable.returncode == 2 and "Traceback" not in unreachable.stderr


def test_remove_namespace(server: ServeProcess) -> None:
    removable = Namespace("removable-model", NAMESPACE.spec)
    with SyncStoreClient(server.address) as client:
        ns = client.register_namespace(removable)
        client.put(ns, prefix_keys(ns, list(range(32)), 16), [block_bytes(7), block_bytes(8)])
    result = admin_json(server, "remove-namespace", "--model-id", "removable-model")
    assert result == {"namespace_id": ns.hex(), "nodes": 1, "blocks": 2}
    stats = admin_json(server, "stats")
    assert isinstance(stats, dict)
    assert "removable-model" not in json.dumps(stats)
    again = admin(server, "remove-namespace", "--namespace-id", ns.hex())
    assert again.returncode == 2 and "no namespace matches" in again.stderr
    bare = admin(server, "remove-namespace")
    assert bare.returncode == 2 and "--model-id or --namespace-id" in bare.stderr
