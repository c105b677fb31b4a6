"""The shape of the house, checked: imports go one way and modules stay readable.

- ``egress.kernel`` (facts both programs share) imports nothing else of the project.
- ``egress.devstack`` (the local stack and producer tooling) imports the product and is
  never imported by it; only the command-line entry point dispatches to it.
- No import cycle anywhere, function-level imports included (``TYPE_CHECKING`` blocks
  are not imports at run time).
- No module is much longer than one reader can hold, except the ones named below.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("egress", "sft_agent")
MAX_LINES = 600
# Modules longer than MAX_LINES, each one concern that reads straight through.
LONG_MODULES: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that runs, at module level or inside functions."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str) -> set[str]:
    """The project modules ``module`` imports (a name imported from a package counts as
    the submodule when one exists by that name)."""
    path = MODULES[module]
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = _resolve(module, path, node)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names
            ]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


GRAPH = {module: _imports(module) for module in MODULES}


def test_the_kernel_imports_nothing_else_of_the_project() -> None:
    leaks = {
        module: sorted(target for target in targets if not target.startswith("egress.kernel"))
        for module, targets in GRAPH.items()
        if module.startswith("egress.kernel")
    }
    assert {module: targets for module, targets in leaks.items() if targets} == {}


def test_the_product_never_imports_the_dev_tooling() -> None:
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if target.startswith("egress.devstack")
        and not module.startswith("egress.devstack")
        and module != "egress.cli"
    )
    assert offenders == []


def test_the_dev_tooling_never_imports_the_command_line() -> None:
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.startswith("egress.devstack")
        for target in targets
        if target == "egress.cli"
    )
    assert offenders == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def test_no_import_cycle() -> None:
    # A package's __init__ importing its own submodules is how packages present
    # themselves, not a cycle between concerns: those edges are left out.
    graph = {
        module: {
            t for t in targets if not (MODULES[module].name == "__init__.py" and t.startswith(module + "."))
        }
        for module, targets in GRAPH.items()
    }
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_length(module: str) -> None:
    path = MODULES[module]
    lines = len(path.read_text(encoding="utf-8").splitlines())
    relative = str(path.relative_to(ROOT))
    if relative in LONG_MODULES:
        return
    assert lines <= MAX_LINES, (
        f"{relative} has {lines} lines: split it by concern, or name it in LONG_MODULES"
    )


_LOG_CALL = re.compile(r"\.(?:debug|info|warning|error|exception|critical)\(\s*\"([^\"]*)\"", re.S)


def test_log_events_have_one_style() -> None:
    """Event names are snake_case identifiers (``message_received``), in both programs."""
    odd = sorted(
        f"{path.relative_to(ROOT)}: {event!r}"
        for path in MODULES.values()
        for event in _LOG_CALL.findall(path.read_text(encoding="utf-8"))
        if not re.fullmatch(r"[a-z][a-z0-9_]*", event)
    )
    assert odd == []
