"""The import graph of ``src/tagood`` has no cycles and no upward imports (issue 15, README "Layout").

Every module is parsed with :mod:`ast`; every ``import tagood...`` / ``from tagood... import`` /
relative import counts, at module level **and inside functions** (a function-level import is still a
dependency: it only hides a cycle until the function runs). An import of ``a.b.c`` is an edge to
``a.b.c`` (or to the deepest existing module of that dotted name); the implicit import of the parent
packages' ``__init__`` is not counted as an edge (every submodule would otherwise "import" its own
package, a cycle Python allows).

The layers are the table :data:`LAYERS` below, lowest first; a module may import its own layer and the
layers below it, never a layer above.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tagood"

#: The layers, lowest first: each is a list of the top-level packages (folders) of ``src/tagood``, plus the
#: few top-level modules that are part of the public surface. A module may import its own layer and the ones
#: below it, never a layer above.
LAYERS: dict[str, tuple[str, ...]] = {
    "base": ("core", "runtime", "errors", "metrics", "assets", "_version"),
    "data": ("data",),
    "backbones": ("backbones",),
    "cache": ("cache",),
    "extract": ("extract",),
    "detectors": ("detectors",),
    "bench": ("bench", "pipeline"),
    "cli": ("cli", "__main__"),
    # the package top (``tagood/__init__.py``): the public API, re-exporting names from every layer (lazily)
    "api": (),
}
#: top-level modules of ``tagood`` that are files, not folders (everything else lives in a package)
TOP_MODULES = {"__init__", "__main__", "_version", "errors", "metrics"}

Edge = tuple[str, int]  # (imported module, line number)


def module_files(root: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (a package's name is its ``__init__``'s)."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path = SRC) -> dict[str, dict[str, int]]:
    """``graph[a][b] = line``: module ``a`` imports module ``b`` (first such line), both inside ``root``'s package."""
    modules = module_files(root)
    top = root.name
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                # `from pkg import sub` imports the submodule when one exists, else names from pkg
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in modules else src for a in node.names]
            for t in targets:
                if t == top or t.startswith(top + "."):
                    dst = _resolve(t, modules)
                    if dst is not None and dst != mod:
                        graph[mod].setdefault(dst, node.lineno)
    return graph


def find_cycles(graph: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """Every strongly connected component of more than one module, as one concrete cycle through it
    (``[a, b, ..., a]``), sorted; self-imports are ignored."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan (the graph has ~150 nodes: recursion is fine)
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in comps:  # shortest cycle through the component's smallest name (BFS inside the component)
        start = min(comp)
        prev: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph.get(v, {})):
                    if w == start:
                        found = v
                        break
                    if w in comp and w not in prev and w != start:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v is not None and v != start:
            path.append(v)
            v = prev.get(v)
        cycles.append([start, *reversed(path[1:]), start])
    return sorted(cycles)


def layer_of(module: str, layers: Mapping[str, Iterable[str]] = LAYERS) -> str | None:
    """The layer of ``tagood.x.y`` (by its top-level name ``x``); the root package (the public API) is the top
    layer; None if unlisted."""
    parts = module.split(".")
    if len(parts) == 1:
        return list(layers)[-1]
    for layer, names in layers.items():
        if parts[1] in names:
            return layer
    return None


def upward_imports(graph: Mapping[str, Mapping[str, int]],
                   layers: Mapping[str, Iterable[str]] = LAYERS) -> list[str]:
    """``"a (layer) -> b (higher layer), line N"`` for every import against the layer order, sorted."""
    rank = {name: i for i, name in enumerate(layers)}
    out = []
    for a, deps in graph.items():
        la = layer_of(a, layers)
        for b, line in deps.items():
            lb = layer_of(b, layers)
            if la is not None and lb is not None and rank[lb] > rank[la]:
                out.append(f"{a} ({la}) -> {b} ({lb}), line {line}")
    return sorted(out)


def _describe(cycle: list[str], graph: Mapping[str, Mapping[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)) + f" -> {cycle[-1]}"


# -- the checks on the real source ----------------------------------------------------------------
@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph(SRC)


def test_every_top_level_module_has_a_layer(graph: dict[str, dict[str, int]]) -> None:
    unlisted = sorted({m.split(".")[1] for m in graph if "." in m and layer_of(m) is None})
    assert not unlisted, f"add these top-level modules of tagood to LAYERS in tests/test_layers.py: {unlisted}"


def test_the_layers_are_folders() -> None:
    """Every layer is a folder of ``src/tagood`` (a package), except the few top-level modules named above."""
    files = sorted(p.stem for p in SRC.glob("*.py") if p.stem not in TOP_MODULES)
    assert not files, f"move these top-level modules of tagood into a package: {files}"
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    listed = {n for names in LAYERS.values() for n in names}
    assert folders <= listed, f"add these packages to LAYERS: {sorted(folders - listed)}"


def test_no_import_cycles(graph: dict[str, dict[str, int]]) -> None:
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (module-level and function-level imports):\n" + "\n".join(
        _describe(c, graph) for c in cycles)


def test_no_upward_imports(graph: dict[str, dict[str, int]]) -> None:
    bad = upward_imports(graph)
    order = " -> ".join(LAYERS)
    assert not bad, f"imports against the layer order {order}:\n" + "\n".join(bad)


def test_the_graph_sees_module_and_function_level_imports(graph: dict[str, dict[str, int]]) -> None:
    """Known real edges, one at module level and one inside a function, so a parser that misses either fails."""
    assert "tagood.data.decode" in graph["tagood.data.source"]  # module level
    factory = graph["tagood.backbones.factory"]
    assert "tagood.backbones.ram" in factory  # inside build_backbone
    assert "tagood.core.types" in graph["tagood.cache.reader"]


# -- the checker itself can fail ------------------------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")


def test_checker_reports_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """A synthetic package: data.a <-> data.b (one import inside a function), data.c -> bench.x (upward),
    bench.x -> data.a (downward, fine), a relative import and a package import."""
    pkg = tmp_path / "tagood"
    _write(pkg, {
        "__init__.py": "",
        "data/__init__.py": "from .a import A\n",
        "data/a.py": "from tagood.data.b import B\nA = 1\n",
        "data/b.py": "B = 2\n\ndef f():\n    from tagood.data import a\n    return a\n",
        "data/c.py": "import tagood.bench.x\n",
        "bench/__init__.py": "",
        "bench/x.py": "from ..data import a\n",
        "cli.py": "from tagood.bench import x\n",
    })
    g = import_graph(pkg)
    assert g["tagood.data.b"] == {"tagood.data.a": 4}  # the function-level import, with its line
    assert g["tagood.bench.x"] == {"tagood.data.a": 1}  # relative import resolved
    assert g["tagood.data"] == {"tagood.data.a": 1}
    assert find_cycles(g) == [["tagood.data.a", "tagood.data.b", "tagood.data.a"]]
    layers = {"base": (), "data": ("data",), "bench": ("bench",), "cli": ("cli",)}
    assert upward_imports(g, layers) == ["tagood.data.c (data) -> tagood.bench.x (bench), line 1"]
    assert _describe(find_cycles(g)[0], g) == "tagood.data.a (line 1) -> tagood.data.b (line 4) -> tagood.data.a"


def test_checker_finds_a_longer_cycle_and_passes_a_clean_graph() -> None:
    g = {"p.a": {"p.b": 1}, "p.b": {"p.c": 2}, "p.c": {"p.a": 3, "p.d": 4}, "p.d": {}, "p.e": {"p.d": 1}}
    assert find_cycles(g) == [["p.a", "p.b", "p.c", "p.a"]]
    del g["p.c"]["p.a"]
    assert find_cycles(g) == []
    assert upward_imports({"tagood.cli.main": {"tagood.data": 1}, "tagood.data": {}}) == []
