"""Dependencies point down: every module of the library imports only modules of its own layer or below, and
no import cycle exists (read from the sources, so the test is quick and names the offending import)."""

from __future__ import annotations

import ast

from helpers import ROOT

PACKAGE = ROOT / "src" / "toe"

# lowest first; a module may import from its own layer and the layers before it, never from a later one
LAYERS = [
    ["toe.errors", "toe.files"],
    ["toe.schedule"],
    ["toe.functional"],
    ["toe.token_select"],
    ["toe.integration"],
    ["toe.vpt"],
    ["toe.models"],
    ["toe.engine"],
    ["toe.data", "toe.detection"],
    ["toe.flops", "toe.figures", "toe.saved_run"],
    ["toe.options", "toe.flag_types"],
    ["toe.recipes"],
    ["toe.report", "toe.plot", "toe.visualize", "toe.bench"],
    ["toe.cli", "toe.__main__"],
]


def module_name(path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path) -> set[str]:
    """The ``toe`` modules a source file imports (relative imports resolved, ``from x import name`` kept as x or
    x.name when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "toe")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "toe":
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if any(name == prefix or name.startswith(prefix + ".") for prefix in layer):
            return index
    raise AssertionError(f"{name} is in no layer of tests/test_layers.py: add it")


def test_every_module_imports_only_its_layer_and_the_layers_below():
    wrong = []
    for name, path in MODULES.items():
        if name == "toe":
            continue  # the package's public API, checked below
        for target in project_imports(path):
            if layer_of(target) > layer_of(name):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "imports that point up: " + "; ".join(sorted(wrong))


def test_the_public_api_imports_only_the_algorithm_and_the_models():
    api = project_imports(MODULES["toe"])
    assert api and all(layer_of(target) <= layer_of("toe.models") for target in api), api


def imported_on_the_way(name: str, target: str) -> set[str]:
    """What importing ``target`` from ``name`` runs: ``target`` and the ``__init__`` of each package above it
    that is not a package of ``name`` itself (those are already being imported)."""
    own = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
    chain = {target.rsplit(".", i)[0] for i in range(target.count(".") + 1)}
    return {m for m in chain - own if m in MODULES}


def test_no_import_cycles():
    graph = {
        name: set().union(*(imported_on_the_way(name, t) for t in project_imports(path)))
        for name, path in MODULES.items()
    }
    done, path = set(), []

    def visit(node):
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(node) :] + [node]))
        if node in done:
            return
        path.append(node)
        for target in sorted(graph[node]):
            visit(target)
        path.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def test_the_graph_reader_sees_an_upward_import(tmp_path):
    """The check is not vacuous: the engine's trainer is read as importing integration and the data loader
    as importing the engine (which is allowed), and an engine module importing the data would be caught."""
    assert "toe.integration" in project_imports(MODULES["toe.engine.trainer"])
    assert "toe.engine.distributed" in project_imports(MODULES["toe.data.loader"])
    assert layer_of("toe.data.loader") > layer_of("toe.engine.trainer")
