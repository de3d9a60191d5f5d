"""The model store's backend: trained models (and logits) as runs of a store experiment.

An entry is a run tagged `kdexp.store_key` with the artifacts `entry/model.pt` and
`entry/history.json`. Callers hold the key's file lock, so for one key nothing else writes here:
an entry of that key still RUNNING is a writer that died (marked FAILED), and an entry whose files
are gone (a deleted `mlruns/`, a database copied without its artifacts) is marked FAILED with the
reason, so that the model is trained again instead of failing every later run. Files are looked
for where a moved project folder put them too (tracking/relocate.py) before an entry is given up.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

from kdexp.config.sections import flatten
from kdexp.tracking.connect import check_writable, client, experiment_id, search_all, sqlite_path
from kdexp.tracking.outage import outage_in_one_line, server_gone
from kdexp.tracking.relocate import local_artifacts
from kdexp.tracking.runs import PARAM_LIMIT
from kdexp.tracking.secrets import redact_values
from kdexp.tracking.ui import rounded

TRAINED_BY_TAG = "kdexp.trained_by"  # the run that trained a store entry

LOST_TAG = "kdexp.store_lost"  # why an entry was given up: its files are gone, or its writer died


def _entries(mlflow_client, exp_id: str, key: str, status: str) -> list:
    return search_all(mlflow_client, [exp_id],
                      f"tags.`kdexp.store_key` = '{key}' and attributes.status = '{status}'",
                      order_by=["attributes.start_time ASC"])


def _give_up(mlflow_client, run_id: str, reason: str) -> None:
    mlflow_client.set_tag(run_id, LOST_TAG, reason[:5000])
    mlflow_client.set_terminated(run_id, "FAILED")


@outage_in_one_line
def find_stored(experiment: str, key: str,
                on_lost: Callable[[str, str], None] = lambda run_id, reason: None) -> tuple[str, dict, dict] | None:
    """(run id, state dict, history) of the oldest usable FINISHED entry for `key`, or None.
    Unusable entries are marked FAILED and reported through `on_lost(run_id, reason)`.
    The state dict is loaded with `weights_only=True`: nothing stored can execute code."""
    import mlflow

    mlflow_client = client()
    exp = mlflow_client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    check_writable(mlflow_client, mlflow.get_tracking_uri(), experiment, exp.experiment_id)  # a READ-only user: before training
    for orphan in _entries(mlflow_client, exp.experiment_id, key, "RUNNING"):
        if _writer_gone(orphan.data.tags.get(WRITER_TAG)):
            _give_up(mlflow_client, orphan.info.run_id, "its writer stopped before it was complete")
    for entry in _entries(mlflow_client, exp.experiment_id, key, "FINISHED"):
        run_id = entry.info.run_id
        try:
            with tempfile.TemporaryDirectory(prefix="kdexp-store-") as tmp:
                folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="entry", dst_path=tmp))
                state, history = _read_entry(folder)
        except Exception as err:  # noqa: BLE001 - MlflowException, OSError, a damaged file: all mean "gone"
            if server_gone(err):  # the files are there; the server is not
                raise
            found = _read_relocated(entry.info.artifact_uri)
            if found is not None:
                return run_id, *found
            reason = f"its files cannot be read ({type(err).__name__}: {' '.join(str(err).split())[:300]})"
            _give_up(mlflow_client, run_id, reason)
            on_lost(run_id, reason)
            continue
        return run_id, state, history
    return None


def _read_entry(folder: Path) -> tuple[dict, dict]:
    import torch

    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    return state, json.loads((folder / "history.json").read_text())


def _read_relocated(artifact_uri: str) -> tuple[dict, dict] | None:
    """The entry read from where its files are now, when the database still names the folder
    it was moved from (a database kdexp could not rewrite, see tracking/relocate.py): an entry
    whose files exist is never given up."""
    import mlflow

    folder = local_artifacts(artifact_uri, sqlite_path(mlflow.get_tracking_uri()))
    if folder is None or not (folder / "entry" / "model.pt").is_file():
        return None
    try:
        return _read_entry(folder / "entry")
    except Exception:  # noqa: BLE001 - a damaged file there too: the entry is gone after all
        return None


def _trained_by() -> dict[str, str]:
    """Tags linking an entry to the run that trained it (the active run of this process)."""
    import mlflow

    active = mlflow.active_run()
    if active is None:
        return {}
    return {TRAINED_BY_TAG: active.info.run_id,
            "mlflow.note.content": f"Trained by run [{active.info.run_id}]"
                                   f"(#/experiments/{active.info.experiment_id}/runs/{active.info.run_id})."}


def _log_curves(mlflow_client, run_id: str, history: dict) -> None:
    """The entry's training curves, one step per epoch, so the UI shows how it trained and its
    final accuracy (a metric's latest value)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    points = [Metric(name, rounded(name, float(value)), now, epoch)
              for name, values in history.items() if isinstance(values, list)
              for epoch, value in enumerate(values, 1) if isinstance(value, (int, float))]
    for start in range(0, len(points), 1000):  # MLflow takes at most 1000 metrics per batch
        mlflow_client.log_batch(run_id, metrics=points[start:start + 1000])


WRITER_TAG = "kdexp.writer"  # host:pid of the process writing an entry


def _writer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _writer_gone(writer: str | None) -> bool:
    """Whether a RUNNING entry's writer is known dead: one of this machine whose process is gone,
    or an entry older kdexp wrote without saying where. Another machine's writer may be
    uploading right now (the key's file lock serialises one machine only): left alone."""
    if not writer:
        return True
    host, _, pid = writer.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


@outage_in_one_line
def save_stored(experiment: str, key: str, payload: dict, label: str, state: dict, history: dict,
                tags: dict | None = None) -> str:
    """Record a trained model as a FINISHED run of the store experiment, with its training curves
    and a link to the run that trained it; returns its run id."""
    import torch

    mlflow_client = client()
    exp_id = experiment_id(mlflow_client, experiment)
    run = mlflow_client.create_run(exp_id, run_name=f"{label} {key[:8]}",
                                   tags=redact_values({"kdexp.store_key": key, "kdexp.role": "store", "kdexp.label": label,
                                                       WRITER_TAG: _writer(), **_trained_by(), **(tags or {})}))
    try:
        _log_curves(mlflow_client, run.info.run_id, history)
        for name, value in flatten(payload).items():
            mlflow_client.log_param(run.info.run_id, name, value[:PARAM_LIMIT])
        with tempfile.TemporaryDirectory(prefix="kdexp-store-") as tmp:
            torch.save(state, Path(tmp) / "model.pt")
            (Path(tmp) / "history.json").write_text(json.dumps(history))
            mlflow_client.log_artifacts(run.info.run_id, tmp, "entry")
    except BaseException as err:
        server_gone(err)  # then the status below is tried once, not retried for minutes
        try:
            mlflow_client.set_terminated(run.info.run_id, "FAILED")
        except Exception:  # noqa: BLE001 - a full disk may refuse this too; the cause is raised below
            pass
        raise
    mlflow_client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
