"""The tracking package: the only place that imports MLflow, one small module per job."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kdexp"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_tracking_package_imports_mlflow():
    outside = [p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py")
               if "tracking" not in p.relative_to(PACKAGE).parts and "mlflow" in _imports(p)]
    assert outside == []
    assert any("mlflow" in _imports(p) for p in (PACKAGE / "tracking").glob("*.py"))


def test_tracking_modules_stay_small_and_do_not_import_the_cli():
    for module in (PACKAGE / "tracking").glob("*.py"):
        assert len(module.read_text().splitlines()) <= 350, module.name
        assert not any(name.startswith("kdexp.cli") for name in _modules(module)), module.name


def _modules(path: Path) -> set[str]:
    return {node.module for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module}


def test_importing_tracking_does_not_import_mlflow():
    """`kdexp --help` and `--cfg job` stay fast: MLflow is imported where it is used."""
    import subprocess
    import sys

    code = "import sys, kdexp.tracking, kdexp.cli; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, check=True)
    assert out.stdout.strip() == "False"
