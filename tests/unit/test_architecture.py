"""The package's shape, checked: layers import only downwards, no cycles, no private names.

Every module under ``src/venvoy`` is parsed (nothing is imported), including
imports inside functions and under ``TYPE_CHECKING``: an import hidden in a
function is still a dependency. The layers, bottom to top, are the folders
named in :data:`LAYERS`; ``docs/architecture.md`` describes them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "venvoy"

#: Bottom to top: a module may import its own layer and the ones before it.
LAYERS = ("core", "image", "runtime", "store", "build", "transport", "cluster", "api", "cli")
#: Top-level modules that may import any layer (the package's public doors).
DOORS = ("venvoy", "venvoy.__main__", "venvoy.container_manager", "venvoy.slurm")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = all_modules()


class Use:
    """One import, or one ``module._name`` access, found in a module."""

    __slots__ = ("line", "name", "target")

    def __init__(self, target: str, line: int, name: str | None = None) -> None:
        self.target = target  # the venvoy module depended on
        self.line = line
        self.name = name  # the attribute taken from it, when known


def resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a (possibly relative) ``from ... import``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def uses(module: str, path: Path) -> list[Use]:
    """Every dependency of ``module`` on another venvoy module, with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Use] = []
    aliases: dict[str, str] = {}  # local name -> venvoy module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "venvoy" or alias.name.startswith("venvoy."):
                    found.append(Use(alias.name, node.lineno))
                    if alias.asname:
                        aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, is_package, node.level, node.module)
            if source != "venvoy" and not source.startswith("venvoy."):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES:  # `from venvoy.x import module`
                    found.append(Use(sub, node.lineno))
                    aliases[alias.asname or alias.name] = sub
                else:
                    found.append(Use(source, node.lineno, alias.name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            target = aliases.get(node.value.id)
            if target is not None:
                found.append(Use(target, node.lineno, node.attr))
    return [u for u in found if owning_module(u.target) != module]


def owning_module(name: str) -> str:
    """The longest prefix of a dotted name that is a module of the package."""
    parts = name.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports: first line}."""
    edges: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        out = edges.setdefault(module, {})
        for use in uses(module, path):
            target = owning_module(use.target)
            if target and target != module:
                out.setdefault(target, use.line)
    return edges


def find_cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


def describe(cycle: list[str], edges: dict[str, dict[str, int]]) -> str:
    members = set(cycle)
    links = [f"{a} -> {b} ({MODULES[a].relative_to(SRC)}:{line})"
             for a in cycle for b, line in sorted(edges[a].items()) if b in members]
    return "; ".join(links)


# -- the tests ------------------------------------------------------------------------------

def test_every_module_is_in_a_layer_or_a_door() -> None:
    strays = [m for m in MODULES if layer(m) is None and m not in DOORS]
    assert strays == [], f"modules outside the layers {LAYERS}: {strays}"


def test_no_import_cycle() -> None:
    edges = graph()
    cycles = find_cycles(edges)
    assert cycles == [], "import cycles:\n" + "\n".join(describe(c, edges) for c in cycles)


def test_layers_import_only_downwards() -> None:
    wrong = []
    for module, path in MODULES.items():
        own = layer(module)
        if own is None:
            continue  # a door may import anything
        for use in uses(module, path):
            target = owning_module(use.target)
            other = layer(target)
            if other is None:
                wrong.append(f"{path.relative_to(SRC)}:{use.line}: {module} ({own}) imports "
                             f"{target or use.target} (outside the layers)")
            elif LAYERS.index(other) > LAYERS.index(own):
                wrong.append(f"{path.relative_to(SRC)}:{use.line}: {module} ({own}) imports "
                             f"{target} ({other}, a higher layer)")
    assert wrong == [], "imports from a higher layer:\n" + "\n".join(sorted(set(wrong)))


def test_no_private_name_used_across_modules() -> None:
    wrong = []
    for module, path in MODULES.items():
        for use in uses(module, path):
            if use.name and use.name.startswith("_") and not use.name.startswith("__"):
                wrong.append(f"{path.relative_to(SRC)}:{use.line}: {module} uses "
                             f"{owning_module(use.target)}.{use.name}")
    assert wrong == [], "private names used across modules:\n" + "\n".join(sorted(set(wrong)))


def runtime_name_branches(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines comparing something's ``.name`` (or ``.binary``) with a runtime's name."""

    def strings(node: ast.expr) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return set().union(*(strings(e) for e in node.elts)) if node.elts else set()
        return set()

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            named = any(isinstance(o, ast.Attribute) and o.attr in ("name", "binary") for o in operands)
            if named and any(strings(o) & names for o in operands):
                lines.append(node.lineno)
    return lines


def test_only_the_adapters_know_runtime_names() -> None:
    """Callers ask the adapter (``has_image_store``, ``image_kind``...), never branch on its name."""
    from venvoy.runtime import RUNTIMES

    wrong = []
    for module, path in MODULES.items():
        if layer(module) == "runtime":
            continue  # the adapters themselves, and the table that names them
        for line in runtime_name_branches(ast.parse(path.read_text()), set(RUNTIMES)):
            wrong.append(f"{path.relative_to(SRC)}:{line}: branches on a runtime's name")
    assert wrong == [], "\n".join(wrong)


def test_runtime_name_branch_finder() -> None:
    tree = ast.parse('if rt.name in ("docker", "podman"):\n    pass\nif x.name == "podman": pass\n'
                     'if rt.name == "alice": pass\nif kind == "docker": pass\n')
    assert runtime_name_branches(tree, {"docker", "podman"}) == [1, 3]


@pytest.mark.parametrize("name", LAYERS)
def test_each_layer_is_a_package_that_says_what_it_owns(name: str) -> None:
    init = PACKAGE / name / "__init__.py"
    assert init.is_file(), f"{init} is missing"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc and doc.strip(), f"{init.relative_to(SRC)} has no docstring saying what the layer owns"


def test_architecture_doc_names_what_exists() -> None:
    """docs/architecture.md stays true: every layer in it, every module it names exists."""
    import re

    doc = (SRC.parent / "docs" / "architecture.md").read_text()
    for name in LAYERS:
        assert f"**{name}**" in doc, f"docs/architecture.md does not describe the {name} layer"
    files = {p.name for root in (PACKAGE, SRC.parent / "tests") for p in root.rglob("*.py")}
    named = set(re.findall(r"[`/(]([a-z_]+\.py)\b", doc))
    assert named, "docs/architecture.md names no module"
    assert sorted(named - files) == [], "docs/architecture.md names modules that do not exist"
    for table in ("RUNTIMES", "FORMATS", "ARCHS"):
        assert table in doc


# -- the checker checks itself ---------------------------------------------------------------

def test_cycle_finder_reports_a_cycle() -> None:
    edges = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert find_cycles(edges) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_uses_sees_hidden_relative_and_private_imports(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "TYPE_CHECKING = False\n"
        "if TYPE_CHECKING:\n"
        "    from venvoy.cli.main import main\n"
        "def f():\n"
        "    from venvoy.store import records\n"
        "    import venvoy.core.fs as vfs\n"
        "    from . import oci\n"
        "    return records._private, vfs.atomic_write, oci._x\n"
    )
    monkeypatch.setitem(MODULES, "venvoy.image.m", src)
    found = {(u.target, u.line, u.name) for u in uses("venvoy.image.m", src)}
    assert ("venvoy.cli.main", 3, "main") in found
    assert ("venvoy.store.records", 5, None) in found
    assert ("venvoy.store.records", 8, "_private") in found
    assert ("venvoy.core.fs", 8, "atomic_write") in found
    assert ("venvoy.image.oci", 8, "_x") in found
