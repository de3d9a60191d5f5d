"""Run identity and per-phase checkpoints, so that re-running a command resumes it.

A run is identified by its resolved config (minus settings that do not change results: progress
bars, threads, the re-run policy, where things are tracked). Its checkpoints live in
`<checkpoint dir>/<run key>/<mlflow run id>/<phase>.pt`: found again from the config (via the run
key tag in MLflow), never from a timestamped folder, and never shared between two runs.
Files are written atomically and loaded with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from kdexp.config import ConfigError
from kdexp.identity import run_key  # noqa: F401  (the run identity lives in kdexp/identity.py)
from kdexp.store import key_lock


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be read; the message names the file and the cause."""


@contextlib.contextmanager
def run_lock(root: str | Path, key: str) -> Iterator[None]:
    """Held for a whole run: a second process with the same config waits, then finds it done."""
    with key_lock(Path(root) / ".locks", f"run-{key}"):
        yield


class Checkpoints:
    """The checkpoint files of one run: `save(phase, state)` each epoch, `load(phase)` on resume."""

    def __init__(self, root: str | Path, key: str, run_id: str):
        self.folder = Path(root) / key / run_id

    def path(self, phase: str) -> Path:
        return self.folder / f"{phase}.pt"

    def save(self, phase: str, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(phase)
        tmp = target.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, target)  # atomic: a crash leaves the previous epoch's file intact

    def load(self, phase: str) -> dict[str, Any] | None:
        target = self.path(phase)
        if not target.is_file():
            return None
        try:
            return torch.load(target, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
            cause = " ".join(str(err).split())[:200]
            raise CheckpointError(
                f"checkpoint {target} cannot be loaded ({type(err).__name__}: {cause}); "
                f"delete it to restart that phase, or run with trainer.rerun=force"
            ) from None

    def exists(self) -> bool:
        return self.folder.is_dir() and any(self.folder.glob("*.pt"))
