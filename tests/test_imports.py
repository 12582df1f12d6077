"""No import cycles among mgd modules, and every module imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mgd"


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the mgd modules it imports anywhere (top level or inside a function; a function-level
    import still ties the two modules together), ``if TYPE_CHECKING:`` blocks excepted."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), filename=str(path))
        type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
        targets = set()
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:  # a submodule
                        targets.add(f"{base}.{alias.name}")
                    elif base in modules:
                        targets.add(base)
        graph[name] = targets - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
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


def test_cycle_detection_finds_a_cycle():
    graph = {"mgd.teachers.caching": {"mgd.train.loop"}, "mgd.train.loop": {"mgd.train.objectives.distill"},
             "mgd.train.objectives.distill": {"mgd.teachers.caching"}, "mgd.errors": set()}
    assert cycles(graph) == [["mgd.teachers.caching", "mgd.train.loop", "mgd.train.objectives.distill"]]


def test_no_import_cycles_among_mgd_modules():
    modules = module_names()
    assert {"mgd.commands.cache", "mgd.teachers.storage", "mgd.teachers.sources"} <= set(modules)
    graph = import_graph(modules)
    assert "mgd.teachers.sources" in graph["mgd.train.objectives.distill"]
    assert cycles(graph) == []


def test_every_module_imports_in_a_fresh_interpreter():
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", code, *module_names()], capture_output=True, text=True,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]


def test_cache_storage_format_is_numpy_only():
    code = ("import sys, mgd.teachers.storage; "
            "assert not {'torch', 'torchvision', 'timm'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)


def test_layers_contract_holds():
    """import-linter's layers contract (pyproject.toml, [tool.importlinter]): no module imports a layer above its own."""
    command = "from importlinter.cli import lint_imports_command; lint_imports_command()"  # the lint-imports script
    result = subprocess.run([sys.executable, "-c", command, "--no-cache"], capture_output=True, text=True,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout
