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


def remove_unused_run_folder(folder: Path, top: Path) -> None:
    """Remove `folder`, a run folder Hydra made for a run refused before it started, when it holds
    only what Hydra writes at the start (`.hydra/*.yaml`, the job's `.log`), then its parents up to
    `top` while they are empty: a refused command leaves nothing behind. Anything else in it (a
    checkpoint, a user's file) keeps the whole folder."""
    folder, top = folder.absolute(), top.absolute()
    if not folder.is_dir() or top not in folder.parents:
        return
    files = [p for p in folder.rglob("*") if not p.is_dir()]
    if any(not (p.suffix == ".log" and p.parent == folder or p.suffix == ".yaml" and p.parent.name == ".hydra")
           for p in files):
        return
    for path in files:
        path.unlink()
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        sub.rmdir()
    while folder != top:
        try:
            folder.rmdir()
        except OSError:  # not empty: another run's folder is beside it
            return
        folder = folder.parent
