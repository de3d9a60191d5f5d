"""No import cycles between kdexp's modules, function-level imports included.

A cycle only works today because one side imports late (inside a function, or at the bottom of a
module); it breaks as soon as someone moves that import, and it hides which module is the base.
Imports under `if TYPE_CHECKING:` do not run, so they do not count."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import kdexp

PACKAGE_DIR = Path(kdexp.__file__).parent

def module_names(root: Path, package: str) -> dict[str, Path]:
    """`kdexp.distill.families.base` → its file, `kdexp.distill.families` → its `__init__.py`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every absolute name an import statement anywhere in `tree` asks for (the module itself, and
    `module.name` for `from module import name`), `if TYPE_CHECKING:` bodies left out."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in (or is)
                anchor = module.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module → the modules of the package it imports (the most specific module each import names)."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for wanted in imported_names(tree, name, path.name == "__init__.py"):
            while wanted and wanted not in modules:  # `pkg.mod.func` → `pkg.mod`
                wanted = wanted.rpartition(".")[0]
            # A module importing its own package's names is not a cycle through the package.
            if wanted and wanted != name and not name.startswith(wanted + "."):
                targets.add(wanted)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def describe(component: frozenset[str], graph: dict[str, set[str]]) -> str:
    """The edges inside one cycle, for a readable failure."""
    return "; ".join(f"{a} → {b}" for a in sorted(component) for b in sorted(graph[a] & component))


def test_kdexp_has_no_import_cycles():
    graph = import_graph(PACKAGE_DIR, "kdexp")
    found = [describe(c, graph) for c in cycles(graph)]
    assert not found, f"import cycles: {found}"


def test_the_model_families_do_not_import_the_builder():
    graph = import_graph(PACKAGE_DIR, "kdexp")
    assert "kdexp.models.factory" not in graph["kdexp.models.resnets"] | graph["kdexp.models.tv_models"]
    assert {"kdexp.models.resnets", "kdexp.models.tv_models", "kdexp.models.staged"} <= graph["kdexp.models.factory"]


# docs/architecture.md, "Layers": a package imports only packages of a lower layer.
LAYERS = {"config": 0, "data": 1, "models": 1, "tracking": 1, "distill": 2, "report": 2, "run": 3, "cli": 4}


def layer_violations(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Imports from a package into one of the same or a higher layer (`__main__` entry points and
    the top-level modules of the package stand outside the layers)."""
    def package(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 2 and parts[-1] != "__main__" else None

    found = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = package(source), package(target)
            if a is not None and b is not None and a != b and layers[b] >= layers[a]:
                found.append(f"{source} → {target}")
    return found


def test_every_import_goes_down_the_layers_of_the_architecture():
    graph = import_graph(PACKAGE_DIR, "kdexp")
    packages = {name.split(".")[1] for name in graph if name.count(".") >= 1 and
                (PACKAGE_DIR / name.split(".")[1]).is_dir()}
    assert packages == set(LAYERS), "docs/architecture.md's layers name every subpackage of kdexp"
    assert layer_violations(graph, LAYERS) == []
    doc = (PACKAGE_DIR.parent / "docs" / "architecture.md").read_text()
    for package, layer in LAYERS.items():
        assert re.search(rf"^{layer}  {package}/", doc, re.M), f"{package}/ is on layer {layer} in the doc"


def test_an_import_up_or_across_a_layer_is_a_violation(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "", "low/__init__.py": "", "mid/__init__.py": "", "top/__init__.py": "",
        "low/a.py": "", "mid/b.py": "from pkg.low import a\n", "mid/c.py": "def f():\n    from pkg.top import d\n",
        "top/d.py": "from pkg.mid import b\n", "top/__main__.py": "import pkg.top.d\n",
    })
    graph = import_graph(pkg, "pkg")
    assert layer_violations(graph, {"low": 0, "mid": 1, "top": 2}) == ["pkg.mid.c → pkg.top.d"]
    assert layer_violations(graph, {"low": 0, "mid": 1, "top": 1}) == ["pkg.mid.c → pkg.top.d", "pkg.top.d → pkg.mid.b"]


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_function_level_import_closes_a_cycle(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.b import helper\n",
        "b.py": "def helper():\n    from pkg import a\n    return a\n",
        "c.py": "import pkg.a\n",
    })
    graph = import_graph(pkg, "pkg")
    assert cycles(graph) == [frozenset({"pkg.a", "pkg.b"})]
    assert describe(cycles(graph)[0], graph) == "pkg.a → pkg.b; pkg.b → pkg.a"


def test_type_checking_imports_and_relative_imports(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "from .sub import thing\n",
        "sub/__init__.py": "from ..base import Base\nthing = 1\n",
        "base.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import thing\n"
                    "else:\n    import json\nclass Base: ...\n"),
        "sub/leaf.py": "from . import thing\nfrom .. import base\n",
    })
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.base"] == set()  # the TYPE_CHECKING import does not count; json is not ours
    assert graph["pkg"] == {"pkg.sub"}
    assert graph["pkg.sub"] == {"pkg.base"}
    assert graph["pkg.sub.leaf"] == {"pkg.base"}  # its own package's names are not an edge
    assert cycles(graph) == []


def test_only_the_tracking_module_imports_mlflow():
    """MLflow is touched from one place (`kdexp/tracking.py`, or a `kdexp/tracking/` subpackage)."""
    offenders = []
    for name, path in module_names(PACKAGE_DIR, "kdexp").items():
        if name == "kdexp.tracking" or name.startswith("kdexp.tracking."):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        wanted = imported_names(tree, name, path.name == "__init__.py")
        if any(w == "mlflow" or w.startswith("mlflow.") for w in wanted):
            offenders.append(name)
    assert not offenders, f"import mlflow outside kdexp.tracking: {offenders}"


@pytest.mark.slow
def test_the_cli_starts_without_torch_or_mlflow():
    """`kdexp --help` and `--cfg job` stay fast (~0.5 s): families, terms and MLflow are imported
    where a run needs them (kdexp.distill.catalog, kdexp.tracking), not with the package."""
    import subprocess
    import sys

    code = "import sys, kdexp.cli.main; print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE_DIR.parent)
    assert out.stdout.strip() == "[]"
