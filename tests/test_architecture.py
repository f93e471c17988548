"""Import rules between layers, checked on the source (see ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_kvstore_never_imports_engine() -> None:
    for path in modules("kvstore"):
        bad = {n for n in imports_of(path) if n == "engine" or n.startswith("engine.")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_policies_are_pure() -> None:
    """Policies see snapshots only: no I/O, no clock, no store internals."""
    allowed = {"__future__", "collections.abc", "dataclasses", "typing", "enum", "kvstore.types"}
    allowed.add("xxhash")  # a pure function of its bytes (placement scores)
    allowed |= {"heapq", "collections", "math"}  # in-memory data structures and arithmetic
    for path in modules("kvstore/policy"):
        extra = {
            n for n in imports_of(path) if n not in allowed and not n.startswith("kvstore.policy")
        }
        assert not extra, f"{path.relative_to(ROOT)} imports {extra}"


def test_the_index_knows_nothing_of_tiers_or_the_store() -> None:
    names = imports_of(ROOT / "kvstore" / "index.py")
    assert not {n for n in names if n.startswith(("kvstore.tiers", "kvstore.store", "asyncio"))}


def test_tiers_do_not_reach_up_into_the_store() -> None:
    for path in modules("kvstore/tiers"):
        names = imports_of(path)
        bad = {n for n in names if n in ("kvstore.store", "kvstore.tiering", "kvstore.index")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_library_code_never_imports_benchmarks_or_tests() -> None:
    for package in ("kvstore", "engine"):
        for path in modules(package):
            bad = {n for n in imports_of(path) if n.split(".")[0] in ("bench", "tests")}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_clients_do_not_need_the_server() -> None:
    for path in modules("kvstore/client"):
        bad = {n for n in imports_of(path) if n.startswith("kvstore.server")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_metadata_backends_know_nothing_of_nodes() -> None:
    for path in modules("kvstore/metadata"):
        if path.name == "publisher.py":
            continue
        bad = {
            n
            for n in imports_of(path)
            if n.startswith(("kvstore.server", "kvstore.client", "kvstore.store"))
        }
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_transfer_engine_stands_below_server_client_and_metadata() -> None:
    for path in modules("kvstore/transfer"):
        banned = ("kvstore.server", "kvstore.client", "kvstore.metadata")
        bad = {n for n in imports_of(path) if n.startswith(banned)}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_transfer_engine_knows_nothing_of_the_store() -> None:
    """The store's data-plane ops are registered on the segment server from
    kvstore/server; the transfer engine serves and moves segments only."""
    store = ("kvstore.store", "kvstore.reads", "kvstore.writes", "kvstore.tiering")
    store += ("kvstore.tiers", "kvstore.index")
    for path in modules("kvstore/transfer"):
        bad = {n for n in imports_of(path) if n.startswith(store)}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


STORE_INTERNALS = (
    "kvstore.store",
    "kvstore.tiers",
    "kvstore.tiering",
    "kvstore.index",
    "kvstore.reads",
    "kvstore.writes",
    "kvstore.metadata",
)


def test_the_engine_reaches_the_store_only_through_its_client() -> None:
    """Engines use the store client, the KV connector and the transfer engine; only the
    code that embeds a node in the engine's process may start one. The simulator
    (``engine/sim``) runs the store's own block index on simulated tiers, and nothing
    else of the store's internals."""
    for path in modules("engine"):
        names = imports_of(path)
        bad = {n for n in names if n.startswith(STORE_INTERNALS)}
        if path.parent.name == "sim":
            bad -= {"kvstore.index"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
        if path.name != "build.py":
            assert "kvstore.server.serve" not in names, path


def test_the_model_knows_nothing_of_workers_services_or_the_store() -> None:
    """The model is plain PyTorch over a paged cache; its errors are the engine's."""
    for path in modules("engine/model"):
        bad = {
            n
            for n in imports_of(path)
            if n.startswith(("kvstore", "engine.workers", "engine.service", "grpc"))
        }
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_workers_do_not_know_their_network_faces() -> None:
    for path in modules("engine/workers"):
        bad = {n for n in imports_of(path) if n.startswith(("engine.service", "grpc"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_routing_policies_are_pure() -> None:
    for name in ("views", "policy", "baselines", "costs", "prefix_index"):
        names = imports_of(ROOT / "engine" / "router" / f"{name}.py")
        bad = {
            n
            for n in names
            if n.split(".")[0] in ("asyncio", "grpc", "time", "socket", "httpx", "fastapi")
            or n.startswith(("kvstore.client", "kvstore.transfer", "engine.service"))
        }
        assert not bad, f"engine/router/{name}.py imports {bad}"


def test_workers_move_kv_only_through_the_connector() -> None:
    """Loads, saves, pushes and their byte offsets belong to ``kvstore.connector``: the
    workers and their cache never use the client's or the transfer engine's byte paths
    (the transfer engine is only handed to the connector)."""
    for package in ("engine/workers", "engine/kv"):
        for path in modules(package):
            bad = {
                n
                for n in imports_of(path)
                if n.startswith(("kvstore.client", "kvstore.transfer"))
                and n != "kvstore.transfer.engine"
            }
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_bearer_metadata_is_built_in_one_place() -> None:
    """Every gRPC client presents its token through ``kvstore.access.bearer_metadata``."""
    for package in ("kvstore", "engine", "bench"):
        for path in modules(package):
            if path == ROOT / "kvstore" / "access.py" or "_proto" in path.parts:
                continue
            assert '("authorization", f"Bearer' not in path.read_text(), path
