"""No import loops between the modules of ``engine``, ``kvstore`` and ``bench``.

Every import counts, whether at module level, inside a function or under
``if TYPE_CHECKING:``: two files that import each other are one concept split in two
(STYLE.md). ``from a.b import c`` names module ``a.b.c`` when that is a module, else
``a.b``. A module's import of its package is an edge to the package's ``__init__``;
the implicit run of the parent package's ``__init__`` is not, so a package importing
its own submodules is not a loop by itself, but a submodule importing its package's
``__init__`` that imports it back is.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "kvstore", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _base_of(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names before its imported names."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    if not is_package:
        parts.pop()
    drop = node.level - 1
    if drop > len(parts):
        raise ValueError(f"{module}: relative import beyond the top-level package")
    parts = parts[: len(parts) - drop]
    if node.module:
        parts.append(node.module)
    return ".".join(parts)


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest prefix of dotted ``name`` that is one of our modules."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def imported_modules(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Our modules that ``module`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base_of(module, is_package, node)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        found.update(target for name in names if (target := _resolve(name, known)))
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    known = all_modules()
    return {module: imported_modules(module, path, known) for module, path in known.items()}


def strongly_connected(graph: dict[str, set[str]]) -> Iterator[frozenset[str]]:
    """Tarjan's components of more than one module, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                members = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.add(member)
                    if member == node:
                        break
                if len(members) > 1:
                    yield frozenset(members)


def one_cycle(graph: dict[str, set[str]], members: frozenset[str]) -> list[str]:
    """A shortest loop through the component's first module, as a path that closes."""
    start = min(members)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no loop in component {sorted(members)}")


def describe(graph: dict[str, set[str]], members: frozenset[str]) -> str:
    return " -> ".join(one_cycle(graph, members)) + f"  (component: {sorted(members)})"


def test_no_import_loops() -> None:
    graph = import_graph()
    loops = set(strongly_connected(graph))
    found = [describe(graph, loop) for loop in loops]
    assert not found, "import loops:\n" + "\n".join(sorted(found))


def _graph_of(sources: dict[str, str], tmp_path: Path) -> dict[str, set[str]]:
    known: dict[str, Path] = {}
    for name, text in sources.items():
        path = tmp_path / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        known[name.removesuffix(".__init__")] = path
    return {module: imported_modules(module, path, known) for module, path in known.items()}


def test_a_package_importing_its_submodule_is_no_loop(tmp_path: Path) -> None:
    graph = _graph_of(
        {
            "pkg.__init__": "from pkg.a import A\nfrom . import b\n",
            "pkg.a": "from pkg.b import B\n",
            "pkg.b": "B = 1\n",
        },
        tmp_path,
    )
    assert graph == {"pkg": {"pkg.a", "pkg.b"}, "pkg.a": {"pkg.b"}, "pkg.b": set()}
    assert list(strongly_connected(graph)) == []


def test_a_submodule_importing_its_package_back_is_a_loop(tmp_path: Path) -> None:
    graph = _graph_of(
        {
            "pkg.__init__": "from pkg.a import A\n",
            "pkg.a": "def f():\n    from pkg import VERSION\n",
        },
        tmp_path,
    )
    assert list(strongly_connected(graph)) == [frozenset({"pkg", "pkg.a"})]
    assert one_cycle(graph, frozenset({"pkg", "pkg.a"})) == ["pkg", "pkg.a", "pkg"]


def test_type_checking_and_relative_imports_count(tmp_path: Path) -> None:
    graph = _graph_of(
        {
            "pkg.__init__": "",
            "pkg.sub.__init__": "",
            "pkg.sub.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from ..b import B\n",
            "pkg.b": "import pkg.sub.a as a\n",
        },
        tmp_path,
    )
    assert graph["pkg.sub.a"] == {"pkg.b"}
    loop = frozenset({"pkg.sub.a", "pkg.b"})
    assert list(strongly_connected(graph)) == [loop]
    assert describe(graph, loop).startswith("pkg.b -> pkg.sub.a -> pkg.b")
