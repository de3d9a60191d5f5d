"""Where kdexp finds its Hydra configs; a leaf module so that the CLI and the schema share it."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# Installed wheels carry the configs inside the package (kdexp/conf); a source checkout keeps
# them at the top of the repository, next to the package.
CONFIG_DIR = _PACKAGE / "conf" if (_PACKAGE / "conf" / "config.yaml").is_file() else _PACKAGE.parent / "conf"
