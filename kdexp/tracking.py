"""The only module that talks to MLflow.

Store: `tracking.uri`, else `MLFLOW_TRACKING_URI`, else MLflow's own default `sqlite:///mlflow.db`
in the working folder, with artifacts under `./mlruns`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdexp.config import ConfigError, flatten

DEFAULT_URI = "sqlite:///mlflow.db"

# MLflow's first use of a sqlite store runs alembic migrations that log a page of INFO lines.
# Creating an experiment logs an INFO line too; kdexp's own output says where the run is.
for _name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
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
    check_local_store(uri)
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.set_experiment(experiment)
    except Exception as err:  # MlflowException, sqlalchemy errors, connection errors: all one line
        cause = " ".join(str(err).split())[:300]
        raise ConfigError(f"tracking.uri={uri}: cannot open experiment {experiment!r} ({type(err).__name__}: {cause})") from None
    return uri, exp.experiment_id


def _unwritable(path: Path) -> str | None:
    """Why `path` (a folder to create or use) cannot be written, or None."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def check_local_store(uri: str) -> None:
    """Refuse, in one line, a local sqlite store that cannot work: its folder or the artifact
    folder (./mlruns) unwritable, or a database file that is not sqlite (never overwritten)."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///").split("?")[0])
    for folder in (db.parent, Path("mlruns")):
        reason = _unwritable(folder.absolute())
        if reason:
            raise ConfigError(f"tracking.uri={uri}: cannot write there: {reason}")
    if db.is_file() and db.stat().st_size > 0:
        with open(db, "rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                raise ConfigError(f"tracking.uri={uri}: {db.absolute()} is not an sqlite database (left untouched)")


class Run:
    """One MLflow run: params, per-epoch metrics, tags, artifacts, and its final status."""

    def __init__(self, tracking_cfg, run_name: str | None, tags: dict[str, str],
                 parent_run_id: str | None = None, resume_run_id: str | None = None):
        import mlflow

        self.mlflow = mlflow
        self.uri, self.experiment_id = prepare(tracking_cfg.uri, tracking_cfg.experiment)
        if resume_run_id:
            self.run = mlflow.start_run(run_id=resume_run_id)
        else:
            self.run = mlflow.start_run(run_name=tracking_cfg.run_name or run_name, tags=tags,
                                        parent_run_id=parent_run_id)
        self.run_id = self.run.info.run_id

    def logged_steps(self, key: str) -> set[int]:
        return {m.step for m in self.mlflow.MlflowClient().get_metric_history(self.run_id, key)}

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
        return ui_hint(self.uri, self.experiment_id, self.run_id)


@dataclass
class PreviousRun:
    run_id: str
    status: str
    objective: float


def find_run(experiment: str, run_key: str) -> PreviousRun | None:
    """The latest top-level run of this config (tag `kdexp.run_key`) in the experiment, if any."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = _client().search_runs([exp.experiment_id], filter_string=f"tags.`kdexp.run_key` = '{run_key}'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run = runs[0]
    objective = run.data.metrics.get(run.data.tags.get("kdexp.objective", "student_acc"), float("nan"))
    return PreviousRun(run.info.run_id, run.info.status, objective)


# --- the model store: trained teachers and baselines as runs of a store experiment ---


def _client():
    import mlflow

    return mlflow.MlflowClient()


def find_stored(experiment: str, key: str) -> tuple[str, dict, dict] | None:
    """(run id, state dict, history) of the FINISHED store entry for `key`, or None.
    The state dict is loaded with `weights_only=True`: nothing stored can execute code."""
    import mlflow
    import torch

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = _client().search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`kdexp.store_key` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"], max_results=1,
    )
    if not runs:
        return None
    run_id = runs[0].info.run_id
    with tempfile.TemporaryDirectory(prefix="kdexp-store-") as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="entry", dst_path=tmp))
        state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        history = json.loads((folder / "history.json").read_text())
    return run_id, state, history


def save_stored(experiment: str, key: str, payload: dict, label: str, state: dict, history: dict) -> str:
    """Record a trained model as a FINISHED run of the store experiment; returns its run id."""
    import mlflow
    import torch

    client = _client()
    exp = mlflow.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=f"{label} {key[:8]}",
                            tags={"kdexp.store_key": key, "kdexp.role": "store", "kdexp.label": label})
    try:
        for name, value in flatten(payload).items():
            client.log_param(run.info.run_id, name, value[:6000])
        with tempfile.TemporaryDirectory(prefix="kdexp-store-") as tmp:
            torch.save(state, Path(tmp) / "model.pt")
            (Path(tmp) / "history.json").write_text(json.dumps(history))
            client.log_artifacts(run.info.run_id, tmp, "entry")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


# --- sweeps: one parent run per multirun, a nested child per job ---

SWEEP_ENV = "KDEXP_PARENT_RUN_ID"


def start_sweep(uri: str | None, experiment: str, sweep_dir: str, overrides: list[str]) -> str:
    """The parent run of a multirun (reused when the same sweep folder is run again); returns its id."""
    import mlflow

    prepare(uri, experiment)
    parent = find_sweep_parent(experiment, sweep_dir, uri)
    client = _client()
    if parent is not None:
        client.update_run(parent, status="RUNNING")
        return parent
    exp = mlflow.get_experiment_by_name(experiment)
    name = f"sweep {Path(sweep_dir).name}: {' '.join(overrides) or '(no overrides)'}"
    run = client.create_run(exp.experiment_id, run_name=name[:250], tags={
        "kdexp.role": "sweep", "kdexp.sweep_dir": sweep_dir,
        "kdexp.sweep_overrides": " ".join(overrides), **({"git_commit": c} if (c := git_commit()) else {}),
    })
    return run.info.run_id


def note_reused(parent_id: str, overrides: list[str], run_id: str) -> None:
    """A sweep job skipped because its config already FINISHED: point the parent at that run
    (one tag per job, so parallel jobs never overwrite each other)."""
    digest = hashlib.sha1(" ".join(overrides).encode()).hexdigest()[:10]
    _client().set_tag(parent_id, f"kdexp.reused.{digest}", f"{run_id} {' '.join(overrides)}"[:5000])


def find_sweep_parent(experiment: str, sweep_dir: str, uri: str | None = None) -> str | None:
    """The parent run tagged with this sweep folder in the store `uri` (resolved as everywhere)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=resolve_uri(uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`kdexp.role` = 'sweep' and tags.`kdexp.sweep_dir` = '{sweep_dir}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _all_children(client, experiment_id: str, parent_id: str) -> list:
    children, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                  max_results=1000, page_token=token)
        children.extend(page)
        token = page.token
        if not token:
            return children


def end_sweep(parent_id: str) -> tuple[str, dict | None]:
    """Close the parent: FINISHED when every child finished, else FAILED; tag and return the best
    finished child by its objective as {run_id, overrides, objective, value}."""
    client = _client()
    parent = client.get_run(parent_id)
    children = _all_children(client, parent.info.experiment_id, parent_id)
    statuses = [c.info.status for c in children]
    # Jobs skipped because their config already FINISHED leave no child, so an empty sweep is fine.
    status = "FINISHED" if all(s == "FINISHED" for s in statuses) else "FAILED"
    client.set_tag(parent_id, "kdexp.jobs", f"{statuses.count('FINISHED')}/{len(statuses)} finished")
    best = None
    for child in children:
        objective = child.data.tags.get("kdexp.objective", "student_acc")
        value = child.data.metrics.get(objective)
        if child.info.status == "FINISHED" and value is not None and (best is None or value > best["value"]):
            best = {"run_id": child.info.run_id, "overrides": child.data.tags.get("overrides", ""),
                    "objective": objective, "value": value}
    if best is not None:
        client.set_tag(parent_id, "kdexp.best_run", best["run_id"])
        client.set_tag(parent_id, "kdexp.best_overrides", best["overrides"])
        client.log_metric(parent_id, f"best_{best['objective']}", best["value"])
    client.set_terminated(parent_id, status)
    return status, best


# --- read side: sweeps and reports ---

from dataclasses import dataclass, field  # noqa: E402  (kept with the code that uses it)


class StoreError(Exception):
    """A one-line reason why the store cannot answer: no store, experiment, sweep or run."""


@dataclass
class RunRecord:
    """What the report needs of a run, as plain data (so callers never touch MLflow objects)."""

    run_id: str
    name: str
    status: str
    start_time: int
    experiment_id: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _record(run) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.run_name or "", run.info.status, run.info.start_time or 0,
                     run.info.experiment_id, dict(run.data.tags), dict(run.data.params), dict(run.data.metrics))


def missing_local_store(uri: str) -> str | None:
    """The path of a local store (sqlite file, file-store folder) that does not exist, else None.
    Checked before connecting: MLflow creates an empty store on first contact."""
    from urllib.parse import unquote, urlparse

    if uri.startswith("sqlite:"):
        path = uri.split("sqlite:///", 1)[1].split("?", 1)[0] if "sqlite:///" in uri else ""
        return None if not path or path == ":memory:" or Path(path).is_file() else path
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = unquote(parsed.path)
    elif parsed.scheme == "":
        path = uri
    else:
        return None  # a server or a database: it answers for itself
    return None if Path(path).is_dir() else path


def _read_client(uri: str | None):
    from mlflow import MlflowClient

    uri = resolve_uri(uri)
    missing = missing_local_store(uri)
    if missing:
        raise StoreError(f"no MLflow store at {Path(missing).resolve()} (tracking URI {uri}); "
                         "run from the folder of your sweeps or pass --tracking-uri")
    return MlflowClient(tracking_uri=uri), uri


def _first_line(err: BaseException) -> str:
    text = getattr(err, "message", None) or str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def find_sweep(uri: str | None, experiment: str, parent_id: str | None = None) -> RunRecord:
    """The parent run `parent_id`, or the most recently started sweep parent of `experiment`."""
    from mlflow.exceptions import MlflowException

    client, uri = _read_client(uri)
    try:
        if parent_id:
            try:
                return _record(client.get_run(parent_id))
            except MlflowException as err:
                raise StoreError(f"no run {parent_id!r} in {uri} ({_first_line(err)})") from None
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise StoreError(f"no experiment {experiment!r} in {uri}; "
                             f"experiments there: {', '.join(names) or 'none'}")
        runs = client.search_runs([exp.experiment_id], filter_string="tags.`kdexp.role` = 'sweep'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    except MlflowException as err:
        raise StoreError(f"cannot read {uri}: {_first_line(err)}") from None
    if not runs:
        raise StoreError(f"no sweep in experiment {experiment!r} ({uri}); "
                         "run one with `kdexp -m key=a,b ...` or pass --parent RUN_ID")
    return _record(runs[0])


def sweep_children(uri: str | None, parent: RunRecord) -> list[RunRecord]:
    """The nested runs of `parent` (deleted runs left out), oldest first."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    client, uri = _read_client(uri)
    children, token = [], None
    try:
        while True:
            page = client.search_runs([parent.experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
                                      run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                      order_by=["attributes.start_time ASC"], page_token=token)
            children += [_record(run) for run in page]
            token = page.token
            if not token:
                return children + _reused_runs(client, parent)
    except MlflowException as err:
        raise StoreError(f"cannot read the runs of {parent.run_id} in {uri}: {_first_line(err)}") from None


def _reused_runs(client, parent: RunRecord) -> list[RunRecord]:
    """Jobs of this sweep that were skipped because their config had FINISHED before (see
    `note_reused`): the earlier run, seen with this sweep's job overrides."""
    reused = []
    for key, value in parent.tags.items():
        if key.startswith("kdexp.reused."):
            run_id, _, overrides = value.partition(" ")
            record = _record(client.get_run(run_id))
            record.tags = {**record.tags, "overrides": overrides, "kdexp.reused_in": parent.run_id}
            reused.append(record)
    return reused


def log_report_artifacts(uri: str | None, run_id: str, files: list[Path], artifact_path: str = "report") -> str:
    """Log `files` under `artifact_path` of run `run_id`; returns the artifact URI of that folder."""
    client, _ = _read_client(uri)
    for file in files:
        client.log_artifact(run_id, str(file), artifact_path)
    return f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"


def ui_hint(uri: str | None, experiment_id: str, run_id: str) -> str:
    """Where to look at a run: its page on a server, or the `mlflow ui` command for a local store."""
    uri = resolve_uri(uri)
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"mlflow ui --backend-store-uri {uri}   (then open experiment {experiment_id}, run {run_id})"


def log_report_summary(uri: str | None, run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
    """The report's summary figures and tags on run `run_id` (a sweep's parent)."""
    client, _ = _read_client(uri)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
