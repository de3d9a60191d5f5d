"""Where kdexp finds its configs, and why a folder cannot be written: leaf helpers that the CLI,
the schema and the tracking store share (no kdexp imports, no side effects)."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # kdexp/
# Installed wheels carry the configs inside the package (kdexp/conf); a source checkout keeps
# them at the top of the repository, next to the package.
CONFIG_DIR = _PACKAGE / "conf" if (_PACKAGE / "conf" / "config.yaml").is_file() else _PACKAGE.parent / "conf"


def unwritable(path: Path) -> str | None:
    """Why `path` (a folder to create or use) cannot be written, or None."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None
