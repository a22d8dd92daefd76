"""The import graph of the product's packages: no cycle, and dependencies point one way
(`submitter -> shared <- worker`, DESIGN.md).

Read from the source with `ast`, so every import counts: those at module level and those inside
functions (deferred so that `--help` never loads TensorFlow) alike. `from package import name`
counts as an import of the submodule when `name` is one, else of the package itself.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "submitter", "worker")
FORBIDDEN = {  # importer package -> packages it must never import
    "shared": {"submitter", "worker", "tensorflow", "keras"},
    "submitter": {"worker", "tensorflow", "keras"},
    "worker": {"submitter"},
}

Graph = dict[str, set[str]]


@cache
def product_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the product's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from ... import` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(module: str, path: Path) -> set[str]:
    """Every module `module` imports, product modules and third-party alike, as dotted names."""
    known = product_modules()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, path.name == "__init__.py")
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return found


@cache
def product_graph() -> Graph:
    """module -> the product modules it imports."""
    known = product_modules()
    return {module: imports_of(module, path) & known.keys() for module, path in known.items()}


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one module or a self-import (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walker_sees_module_level_function_level_and_relative_imports():
    graph = product_graph()
    assert "worker.outcomes" in graph["worker.loop"]  # module level
    assert "worker.training" in graph["worker.cli"]  # inside a function (TensorFlow loads late)
    assert "worker.training.data" in graph["worker.training.runner"]  # `from package import submodule`
    assert len(graph) > 50
    tree = ast.parse("from ..errors import BadInputError\nfrom . import local\n")
    relative = [_absolute(node, "shared.backends.sqlite", False) for node in tree.body]  # type: ignore[arg-type]
    assert relative == ["shared.errors", "shared.backends"]


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_shared_submitter_worker():
    assert cycles(product_graph()) == []


def test_dependencies_point_one_way():
    wrong = []
    for module, path in product_modules().items():
        forbidden = FORBIDDEN[module.split(".")[0]]
        names = sorted(imports_of(module, path))
        wrong += [f"{module} imports {name}" for name in names if name.split(".")[0] in forbidden]
    assert wrong == []


def test_the_loop_and_its_seam_load_no_training_code():
    """`worker.job` types the loop-to-training seam without TensorFlow; importing the loop never
    runs `worker/training/__init__.py`."""
    probe = (
        "import sys, worker.job, worker.loop; "
        "print(sorted(m for m in ('worker.training', 'tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
