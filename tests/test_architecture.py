"""The layering of docs/architecture.md, checked on the source: imports run down the layers, never in circles.

Every import counts, wherever it is written (module level, inside a function, under ``TYPE_CHECKING``):
a function-level import that dodges a cycle is still a dependency. The one cycle allowed is the backbone
registry's decorator pattern (``models.registry`` loads ``models.backbones``, whose modules register
themselves with the registry's decorator).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "models", "export")

# Bottom first. A module may import its own layer's modules and any lower layer's, nothing higher.
# Prefixes are matched longest first.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        (
            "service",  # the package __init__
            "service.settings",
            "service.atomic_files",
            "service.private_files",
            "service.sqlite_text",
            "service.command_hints",
            "service.postgres",
        ),
    ),
    ("pack contract", ("service.packs",)),
    ("pipeline stages", ("service.pipeline",)),
    ("gallery and keys", ("service.gallery", "service.auth")),
    ("use cases", ("service.usecases",)),
    ("front ends", ("service.api", "service.evaluation")),
    ("command line", ("service.cli",)),
    ("models", ("models", "models.registry", "models.backbones", "models.heads")),
    ("training", ("models.training",)),
    ("export", ("export",)),
)

# Libraries a layer must not import: HTTP stays in the API, torch stays out of the service.
FORBIDDEN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("service", ("torch", "torchvision")),
    ("service.usecases", ("fastapi", "starlette")),
    ("service.gallery", ("fastapi", "starlette")),
    ("service.pipeline", ("fastapi", "starlette")),
    # The pack contract runs no model; it may open one only to read an insightface graph's input and
    # output names (service.packs.insightface, lazily: onnxruntime is a runtime dependency, onnx is not).
    ("service.packs", ("fastapi", "starlette", "torch")),
)

ALLOWED_CYCLES = ({"models.registry", "models.backbones"},)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
    }


def _imported_names(module: str, path: Path) -> Iterator[str]:
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            # `from service.pipeline import detect` imports the module service.pipeline.detect.
            yield from (f"{base}.{alias.name}" for alias in node.names)


@cache
def _project_imports() -> dict[str, frozenset[str]]:
    modules = _modules()
    edges: dict[str, frozenset[str]] = {}
    for module, path in modules.items():
        targets = {name for name in _imported_names(module, path) if name in modules and name != module}
        edges[module] = frozenset(targets)
    return edges


def _layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")
    return best[1]


def _group(module: str) -> str:
    """The unit a cycle is judged at for the allowed registry cycle (a backbone module = models.backbones)."""
    return "models.backbones" if module.startswith("models.backbones") else module


def test_every_module_belongs_to_a_layer() -> None:
    for module in _modules():
        _layer_of(module)


def test_imports_only_run_down_the_layers() -> None:
    upward = [
        f"{module} ({LAYERS[_layer_of(module)][0]}) imports {target} ({LAYERS[_layer_of(target)][0]})"
        for module, targets in _project_imports().items()
        for target in sorted(targets)
        if _layer_of(target) > _layer_of(module)
    ]
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def _strongly_connected(edges: dict[str, frozenset[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the graph has a few hundred nodes)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, frozenset())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return components


def test_no_import_cycles_except_the_backbone_registry() -> None:
    cycles = [
        sorted(component)
        for component in _strongly_connected(_project_imports())
        if {_group(member) for member in component} not in ALLOWED_CYCLES
    ]
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The check above must be able to fail: a three-module loop and a self-contained pair are found.
    graph = {
        "a": frozenset({"b"}),
        "b": frozenset({"c"}),
        "c": frozenset({"a"}),
        "d": frozenset({"a"}),
        "e": frozenset(),
    }
    assert _strongly_connected(graph) == [{"a", "b", "c"}]


@pytest.mark.parametrize(("prefix", "libraries"), FORBIDDEN)
def test_layers_keep_out_the_libraries_they_must_not_use(prefix: str, libraries: tuple[str, ...]) -> None:
    offending = [
        f"{module} imports {name}"
        for module, path in _modules().items()
        if module == prefix or module.startswith(prefix + ".")
        for name in _imported_names(module, path)
        if name.split(".")[0] in libraries
    ]
    assert not offending, "\n".join(offending)
