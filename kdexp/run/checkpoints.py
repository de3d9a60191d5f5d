"""Per-phase checkpoints, so that re-running a command resumes it (the run identity: kdexp/config/identity.py).

A run is identified by its resolved config (minus settings that do not change results: progress
bars, threads, the re-run policy, where things are tracked). Its checkpoints live in
`<checkpoint dir>/<run key>/<mlflow run id>/<phase>.pt`: found again from the config (via the run
key tag in MLflow), never from a timestamped folder, and never shared between two runs.
Files are written atomically (a failed write, e.g. a full disk, leaves the previous epoch's file
and no temporary file) and loaded with `weights_only=True`. A FINISHED run's files are removed
unless `trainer.keep_checkpoints=true`.

Each file names the run key it was written for (`RUN_KEY_FIELD`), and a file of another key is
refused in one line (issue 27, case 5: a `student.pt` copied from the T=9 run's folder into the
T=7 run's would otherwise resume T=7 from T=9's epoch and weights). A file written before keys
were recorded names none: it is accepted with a note, so runs interrupted before an upgrade still
resume (their folder, `<run key>/<run id>`, was chosen by that key).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from kdexp.config.checks import ConfigError
from kdexp.run import distributed
from kdexp.run.console import console
from kdexp.run.model_store import key_lock

RUN_KEY_FIELD = "kdexp_run_key"  # in every checkpoint: the run key it belongs to


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
        self.key = key
        self.folder = Path(root) / key / run_id

    def path(self, phase: str) -> Path:
        return self.folder / f"{phase}.pt"

    def save(self, phase: str, state: dict[str, Any]) -> None:
        """Write atomically: serialise in memory, write a temporary file, rename it over the last
        one. Writing through Python's file object makes a full disk an `OSError(ENOSPC)` naming
        the file (torch's own writer reports it as a bare RuntimeError). Under DDP rank 0 writes."""
        if not distributed.current().is_main:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(phase)
        tmp = target.with_suffix(".pt.tmp")
        buffer = io.BytesIO()
        torch.save({**state, RUN_KEY_FIELD: self.key}, buffer)
        try:
            with open(tmp, "wb") as handle:
                handle.write(buffer.getbuffer())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)  # atomic: a crash leaves the previous epoch's file intact
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise OSError(err.errno, err.strerror, str(target)) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def load(self, phase: str) -> dict[str, Any] | None:
        """The phase's last state; under DDP rank 0 reads it and every rank resumes from its copy
        (no shared file system needed across nodes)."""
        if not distributed.current().active:
            return self._read(phase)
        try:
            state, error = (self._read(phase), None) if distributed.current().is_main else (None, None)
        except CheckpointError as err:
            state, error = None, str(err)
        state, error = distributed.broadcast((state, error))
        if error is not None:  # every rank stops with rank 0's one line
            raise CheckpointError(error)
        return state

    def _read(self, phase: str) -> dict[str, Any] | None:
        target = self.path(phase)
        if not target.is_file():
            return None
        try:
            state = torch.load(target, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
            raise CheckpointError(
                f"checkpoint {target} cannot be loaded ({_cause(err, target)}); "
                f"delete it to restart that phase, or run with trainer.rerun=force"
            ) from None
        return self._own(state, target)

    def _own(self, state: Any, target: Path) -> Any:
        """`state` without its run key, refused when that key is another run's (a file copied
        between runs' folders); a file of an earlier version, which names no key, with a note."""
        found = state.pop(RUN_KEY_FIELD, None) if isinstance(state, dict) else None
        if found is None:
            console.print(f"kdexp: note: checkpoint {target} names no run key (written by an earlier kdexp); "
                          f"resuming from it as the checkpoint of this run, whose folder it is in", markup=False)
        elif found != self.key:
            raise CheckpointError(
                f"checkpoint {target} belongs to run key {found}, not to this run's key {self.key} (copied "
                f"from another run's folder?); move it back to that run's folder or delete it to restart "
                f"that phase")
        return state

    def remove(self) -> None:
        """Delete this run's files (and its config's folder when no other run is left in it)."""
        if not distributed.current().is_main:
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()  # only when empty


def _cause(err: BaseException, target: Path) -> str:
    """The reason a checkpoint failed to load, whole and on one line."""
    if target.is_file() and target.stat().st_size == 0:
        return "the file is empty (0 bytes): it was cut off while being written"
    raw = str(err)
    if "Weights only load failed" in raw:
        # torch's message is a page of advice on weights_only around one line of cause: keep that
        advice = ("Weights only load failed", "Check the documentation", "Please file an issue")
        detail = [line.split("use case: ")[-1].strip() for line in raw.splitlines()
                  if line.strip() and (not line.startswith(advice) or "use case: " in line)]
        raw = "not plain tensors and data, which weights_only loading refuses: " + " ".join(d for d in detail if d)
    text = " ".join(raw.split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
