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
    assert (stats["open_reservations"], stats["read_pins"]) == (0, 0)  # the puts ended
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
    partial = admin(server, "--json", "pin", "--text", PROMPT, "--ttl", "60")
    assert json.loads(partial.stdout) == {"verb": "pin", "blocks": 3, "of": 5}
    assert partial.returncode == 2  # less than asked: says so and fails
    assert "pinned 3 of 5 blocks: the other 2 are not cached" in partial.stderr
    assert admin_json(server, "stats")["pinned_blocks"] == 3  # type: ignore[index]
    (row,) = admin_json(server, "pins")  # type: ignore[misc]
    assert (row["blocks"], row["tiers"], row["namespace"]) == (
        3,
        {"dram": 3},
        "test-model (" + row["namespace"][12:],
    )
    assert 0 < row["ttl_s"] <= 60
    assert "pinned prompts" in admin(server, "pins").stdout
    empty = admin(server, "pin", "--text", "short")
    assert empty.returncode == 2 and "fewer than one block of 16: nothing to pin" in empty.stderr
    needs_router = admin(server, "pin", "--messages", str(tmp_path / "m.json"))
    assert needs_router.returncode == 2 and "--messages: needs --router" in needs_router.stderr
    assert admin_json(server, "unpin", "--text", PROMPT)["blocks"] == 3  # type: ignore[index]
    assert admin_json(server, "stats")["pinned_blocks"] == 0  # type: ignore[index]
    assert admin_json(server, "pins") == []
    assert "cached blocks" in admin(server, "lookup", "--text", PROMPT).stdout


def test_evict_flush_config_top(server: ServeProcess) -> None:
    assert admin_json(server, "evict", "--tier", "dram", "--blocks", "1") == {"blocks": 1}
    (tier,) = admin_json(server, "stats")["tiers"]  # type: ignore[index]
    assert (tier["dropped_blocks"], tier["demoted_blocks"]) == (1, 0)  # the only tier drops
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


def test_global_flags_go_before_or_after_the_verb(server: ServeProcess) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    after = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvstore.cli",
            "admin",
            "stats",
            "--address",
            server.address,
            "--json",
            "--timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["node_id"]
    before = admin(server, "--json", "nodes", "--timeout", "5")  # mixed: not overwritten
    assert before.returncode == 0 and json.loads(before.stdout)[0]["address"] == server.address


def test_bad_flags_name_the_flag_without_a_traceback(server: ServeProcess) -> None:
    for args, flag in (
        (("evict", "--tier", "dram", "--blocks", "-5"), "--blocks must be positive"),
        (("evict", "--tier", "dram", "--blocks", "x"), "--blocks takes a whole number"),
        (("top", "--interval", "0"), "--interval must be positive"),
        (("stats", "--timeout", "nan"), "--timeout must be positive"),
        (("pin", "--text", "x", "--ttl", "-1"), "--ttl must be positive"),
    ):
        result = admin(server, *args)
        assert result.returncode == 2, args
        assert flag in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_top_json_streams_lines(server: ServeProcess) -> None:
    result = admin(server, "top", "--json", "--interval", "0.1", "--count", "2")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2 and lines[0]["nodes"][0]["node_id"]


def test_stats_reset_zeroes_the_counters_and_says_since_when(server: ServeProcess) -> None:
    before = admin_json(server, "stats")
    assert isinstance(before, dict) and before["hit_blocks"] > 0
    reset = admin_json(server, "stats", "--reset")
    assert reset["hit_blocks"] == before["hit_blocks"]  # type: ignore[index]
    after = admin_json(server, "stats")
    assert isinstance(after, dict)
    assert (after["hit_blocks"], after["miss_blocks"], after["put_blocks"]) == (0, 0, 0)
    assert after["since_s"] > before["since_s"] > 0
    assert "counting since" in admin(server, "stats").stdout


def test_cluster_stats_and_nodes_show_a_dead_node_as_unreachable() -> None:
    from tests.redis_server import RedisServer

    with RedisServer() as redis:
        flags = {
            "store.block_bytes": str(BLOCK),
            "tiers.dram.capacity_bytes": str(16 * BLOCK),
            "metadata.backend": "redis",
            "metadata.redis_url": redis.url,
            "metadata.node_ttl_s": "60",  # the dead node stays registered all test long
        }
        with (
            ServeProcess(**flags, **{"store.node_id": "alive"}) as alive,
            ServeProcess(**flags, **{"store.node_id": "dead"}) as dead,
        ):
            dead.kill()
            cluster = ("--cluster", redis.url, "--timeout", "1")
            stats = admin_json(alive, "stats", *cluster)
            assert isinstance(stats, dict)
            assert [n["node_id"] for n in stats["nodes"]] == ["alive"]
            assert [n["node_id"] for n in stats["unreachable"]] == [dead.address]
            rows = admin_json(alive, "nodes", *cluster)
            assert isinstance(rows, list)
            assert {r["node_id"]: r["reachable"] for r in rows} == {"alive": True, "dead": False}
            table = admin(alive, "nodes", *cluster)
            assert table.returncode == 0 and "unreachable" in table.stdout


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
