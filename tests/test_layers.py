"""The package's layers, enforced: every import (at the top of a module or inside a function) goes down a layer or
stays in its own, and no modules import each other in a circle.

Bottom to top (docs/architecture.md draws them):

1. the method, at the package root: settings, fusion, step, prompting, references, images, offload, models/,
   pipeline;
2. the product's input and output, ``facediffuser.io``: requests checked before a model loads, output files and
   folders, model loading and conversion, weight files, the tokenizer, the flags of a command;
3. ``facediffuser.training`` and ``facediffuser.evaluation``;
4. the lab, ``facediffuser.lab``: the procedural world and the mini model, which the layers below reach only by name
   (the registries of :mod:`facediffuser.evaluation.benchmarks`, :mod:`facediffuser.evaluation.identity` and
   :mod:`facediffuser.io.faces`), never by import;
5. ``facediffuser.cli`` and ``facediffuser.demo``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import facediffuser

PACKAGE = Path(facediffuser.__file__).parent

# The first folder of a module's path below the package -> its layer; modules at the package root are layer 1.
LAYERS = {"models": 1, "io": 2, "training": 3, "evaluation": 3, "lab": 4, "cli": 5, "demo": 5}
LAYER_NAMES = {1: "the method", 2: "input and output", 3: "training and evaluation", 4: "the lab", 5: "CLI and demo"}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def module_names(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package)}`` of every module under ``root`` (the package's folder)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        names[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return names


def imports(root: Path, package: str) -> list[Import]:
    """Every import of a module of the package by a module of the package, wherever it stands in the file."""
    names = module_names(root, package)

    def known(name: str) -> str | None:
        while name and name not in names:
            name = name.rpartition(".")[0]
        return name or None

    found = []
    for importer, (path, is_package) in names.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = importer.split(".")[: None if is_package else -1]
                    base = base[: len(base) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from .io import inputs` imports the module io.inputs; `from .fusion import Stage` the module fusion
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in names else module for a in node.names]
            else:
                continue
            for target in {t for t in map(known, targets) if t}:
                if target != importer and not importer.startswith(target + "."):  # a parent runs first anyway
                    found.append(Import(importer, target, node.lineno))
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 1) if len(parts) > 1 else 1


def upward(found: list[Import]) -> list[str]:
    """The imports that go up a layer, as readable lines."""
    return sorted(
        f"{i.importer} (line {i.line}, {LAYER_NAMES[layer(i.importer)]}) imports {i.imported} "
        f"({LAYER_NAMES[layer(i.imported)]})"
        for i in found
        if layer(i.imported) > layer(i.importer)
    )


def circles(found: list[Import]) -> list[list[str]]:
    """The groups of modules that import each other in a circle (strongly connected components of two or more)."""
    graph: dict[str, set[str]] = {}
    for i in found:
        graph.setdefault(i.importer, set()).add(i.imported)
        graph.setdefault(i.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def test_no_import_goes_up_a_layer():
    assert upward(imports(PACKAGE, "facediffuser")) == []


def test_no_modules_import_each_other_in_a_circle():
    assert circles(imports(PACKAGE, "facediffuser")) == []


def test_every_module_lies_in_a_layer_the_architecture_names():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders <= set(LAYERS), f"a sub-package of no layer: {sorted(folders - set(LAYERS))}"


def test_the_checks_find_an_upward_import_and_a_circle(tmp_path):
    # The same checks over a small package with one of each, written the ways the real code imports: a relative
    # import inside a function (upward) and top-level absolute and relative imports (the circle).
    root = tmp_path / "pkg"
    for folder in ("io", "lab"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "fusion.py").write_text("from .io import inputs\n")
    (root / "io" / "inputs.py").write_text("def f():\n    from ..lab import world\n")
    (root / "lab" / "world.py").write_text("import pkg.lab.mini\n")
    (root / "lab" / "mini.py").write_text("from . import world\n")
    found = imports(root, "pkg")
    assert upward(found) == [
        "pkg.fusion (line 1, the method) imports pkg.io.inputs (input and output)",
        "pkg.io.inputs (line 2, input and output) imports pkg.lab.world (the lab)",
    ]
    assert circles(found) == [["pkg.lab.mini", "pkg.lab.world"]]
