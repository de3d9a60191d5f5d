"""Filesystem checks shared by the CLI and the tracking store: one-line reasons, no side effects."""

from __future__ import annotations

import os
from pathlib import Path


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
