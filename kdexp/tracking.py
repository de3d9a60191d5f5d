"""The only module that talks to MLflow.

Store: `tracking.uri`, else `MLFLOW_TRACKING_URI`, else MLflow's own default `sqlite:///mlflow.db`
in the working folder, with artifacts under `./mlruns`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import traceback
from pathlib import Path
from typing import Any

DEFAULT_URI = "sqlite:///mlflow.db"

# MLflow's first use of a sqlite store runs alembic migrations that log a page of INFO lines.
for _name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def git_commit() -> str | None:
    """The commit of the working folder's repository, when there is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def prepare(uri: str | None, experiment: str) -> tuple[str, str]:
    """Create the store and the experiment (idempotent); returns (uri, experiment_id).

    Call this in the launching process before parallel jobs start: concurrent first-time
    migrations of a sqlite store race."""
    import mlflow

    uri = resolve_uri(uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.set_experiment(experiment)
    return uri, exp.experiment_id


class Run:
    """One MLflow run: params, per-epoch metrics, tags, artifacts, and its final status."""

    def __init__(self, tracking_cfg, run_name: str | None, tags: dict[str, str],
                 parent_run_id: str | None = None):
        import mlflow

        self.mlflow = mlflow
        self.uri, self.experiment_id = prepare(tracking_cfg.uri, tracking_cfg.experiment)
        self.run = mlflow.start_run(run_name=tracking_cfg.run_name or run_name, tags=tags,
                                    parent_run_id=parent_run_id)
        self.run_id = self.run.info.run_id

    # --- logging ---
    def params(self, params: dict[str, Any]) -> None:
        self.mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.mlflow.log_metrics({k.replace("@", "_"): float(v) for k, v in metrics.items()}, step=step)

    def tags(self, tags: dict[str, str]) -> None:
        self.mlflow.set_tags(tags)

    def text(self, text: str, path: str) -> None:
        self.mlflow.log_text(text, path)

    def figure(self, figure, path: str) -> None:
        self.mlflow.log_figure(figure, path)

    def folder(self, folder: str | Path, artifact_path: str) -> None:
        if Path(folder).is_dir():
            self.mlflow.log_artifacts(str(folder), artifact_path)

    def model(self, model, name: str, example) -> str:
        """Log a torch model so that `mlflow.pytorch.load_model(uri)` loads it; returns the uri."""
        import mlflow.pytorch
        import torch

        info = mlflow.pytorch.log_model(
            model, name=name, input_example=example,
            # Pinning avoids MLflow's slow requirement inference (it imports the world).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
        return info.model_uri

    # --- ending ---
    def finish(self) -> None:
        self.mlflow.end_run(status="FINISHED")

    def fail(self, err: BaseException) -> None:
        """End as FAILED (or KILLED on Ctrl-C) with the error recorded as a tag and a text artifact."""
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        try:
            self.mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
            self.mlflow.log_text("".join(traceback.format_exception(err)), "error.txt")
        finally:
            self.mlflow.end_run(status=status)

    def ui_hint(self) -> str:
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"mlflow ui --backend-store-uri {self.uri}   (then open experiment {self.experiment_id}, run {self.run_id})"


def tmp_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="kdexp-")
