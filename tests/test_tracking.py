"""The tracking package imports MLflow lazily (which modules may import it at all, and their sizes,
are checked for the whole package by test_imports.py and test_module_sizes.py)."""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kdexp"


def test_importing_tracking_does_not_import_mlflow():
    """`kdexp --help` and `--cfg job` stay fast: MLflow is imported where it is used."""
    import subprocess
    import sys

    code = "import sys, kdexp.tracking, kdexp.cli; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, check=True)
    assert out.stdout.strip() == "False"
