"""The report's reader: a sweep's parent and all its jobs, as plain records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kdexp.config.checks import ConfigError
from kdexp.tracking.connect import resolve_uri, search_all, sqlite_path
from kdexp.tracking.relocate import follow_folder
from kdexp.tracking.store_file import check_store_file

REUSED_PREFIX = "kdexp.reused."  # parent tag per job skipped because its config had FINISHED


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


def record(run) -> RunRecord:
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


def read_client(uri: str | None):
    from mlflow import MlflowClient

    uri = resolve_uri(uri)
    missing = missing_local_store(uri)
    if missing:
        raise StoreError(f"no MLflow store at {Path(missing).resolve()} (tracking URI {uri}); "
                         "run from the folder of your sweeps or pass --tracking-uri")
    db = sqlite_path(uri)
    if db is not None:
        try:  # damaged, not sqlite, not MLflow's: the one line kdexp gives too (kdexp/tracking/store_file.py)
            check_store_file(uri, db)
        except ConfigError as err:
            raise StoreError(str(err)) from None
        follow_folder(db)  # a moved or copied project folder: its artifacts are read where they are now
    return MlflowClient(tracking_uri=uri), uri


def _first_line(err: BaseException) -> str:
    text = getattr(err, "message", None) or str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def find_sweep(uri: str | None, experiment: str, parent_id: str | None = None) -> RunRecord:
    """The parent run `parent_id`, or the most recently started sweep parent of `experiment`."""
    from mlflow.exceptions import MlflowException

    client, uri = read_client(uri)
    try:
        if parent_id:
            try:
                return record(client.get_run(parent_id))
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
    return record(runs[0])


def jobs_of(client, parent: RunRecord) -> list[RunRecord]:
    """Every job of a sweep: its nested runs (deleted ones left out; a job resumed by this sweep
    is nested here), oldest first, then the runs it reused because they had FINISHED before."""
    from mlflow.entities import ViewType

    children = search_all(client, [parent.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
                          run_view_type=ViewType.ACTIVE_ONLY, order_by=["attributes.start_time ASC"])
    nested = [record(run) for run in children]
    seen = {r.run_id for r in nested}
    return nested + [r for r in _reused_runs(client, parent) if r.run_id not in seen]


def sweep_children(uri: str | None, parent: RunRecord) -> list[RunRecord]:
    """`jobs_of` the parent in the store `uri`, or a one-line StoreError."""
    from mlflow.exceptions import MlflowException

    client, uri = read_client(uri)
    try:
        return jobs_of(client, parent)
    except MlflowException as err:
        raise StoreError(f"cannot read the runs of {parent.run_id} in {uri}: {_first_line(err)}") from None


def _reused_runs(client, parent: RunRecord) -> list[RunRecord]:
    """Jobs of this sweep that were skipped because their config had FINISHED before (see
    `sweeps.note_reused`): the earlier run, seen with this sweep's job overrides."""
    reused = []
    for key, value in parent.tags.items():
        if key.startswith(REUSED_PREFIX):
            run_id, _, overrides = value.partition(" ")
            found = record(client.get_run(run_id))
            found.tags = {**found.tags, "overrides": overrides, "kdexp.reused_in": parent.run_id}
            reused.append(found)
    return reused


def log_report_artifacts(uri: str | None, run_id: str, files: list[Path], artifact_path: str = "report") -> str:
    """Log `files` under `artifact_path` of run `run_id`; returns the artifact URI of that folder."""
    client, _ = read_client(uri)
    for file in files:
        client.log_artifact(run_id, str(file), artifact_path)
    return f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"


def log_report_summary(uri: str | None, run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
    """The report's summary figures and tags on run `run_id` (a sweep's parent)."""
    client, _ = read_client(uri)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
