"""What a wheel ships: setuptools installs only the packages pyproject.toml lists, so a subpackage
missing there works in an editable checkout and breaks every `pip install .` elsewhere."""

import tomllib
from pathlib import Path

import kdexp

ROOT = Path(kdexp.__file__).resolve().parents[1]


def test_every_subpackage_of_kdexp_is_listed_for_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "kdexp").rglob("__init__.py")}
    assert on_disk - listed == set()


def test_every_console_script_points_at_a_function():
    import importlib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name
