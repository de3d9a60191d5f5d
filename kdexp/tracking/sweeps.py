"""The sweep lifecycle: one parent run per multirun launch, a nested child per job."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path

from kdexp.tracking.connect import client, git_commit, open_tracking_store, prepare, resolve_uri, search_all
from kdexp.config.owners import override_key
from kdexp.tracking.job_names import COMMON_KEYS_TAG, job_name, sweep_name
from kdexp.tracking.reader import REUSED_PREFIX, RunRecord, jobs_of, record
from kdexp.tracking.runs import PARAM_LIMIT, RUN_NAME_LIMIT
from kdexp.tracking.secrets import redact, redact_values
from kdexp.tracking.ui import KEY_METRICS, rounded, sweep_view

SWEEP_ENV = "KDEXP_PARENT_RUN_ID"
AXES_TAG = "kdexp.sweep_axes"  # JSON list: the sweep overrides (`loss.temperature=2,8`); read by report/values.py


def start_sweep(uri: str | None, experiment: str, sweep_dir: str, overrides: list[str],
                axes: list[str] | None = None, common: dict[str, str] | None = None,
                tags: dict[str, str] | None = None) -> str:
    """A new parent run for this launch, named by its `axes` (the sweep overrides), with the
    sweep's `common` config (flattened, the axes' keys left out) and its axes as params; returns
    its id, and any other `tags` (the teachers pinned at launch). Parents still RUNNING whose
    launcher on this machine is gone (killed with -9: nothing could close them) are closed as KILLED."""
    _, exp_id = prepare(uri, experiment)
    mlflow_client = client()
    _close_orphans(mlflow_client, exp_id)
    axes = list(axes or [])
    axis_keys = [override_key(a) for a in axes]
    common_keys = [override_key(o) for o in overrides if override_key(o) not in axis_keys]
    run = mlflow_client.create_run(exp_id, run_name=redact(sweep_name(axes, Path(sweep_dir).name))[:RUN_NAME_LIMIT], tags=redact_values({
        "kdexp.role": "sweep", "kdexp.sweep_dir": sweep_dir, LAUNCHER_TAG: _launcher(),
        "kdexp.sweep_overrides": " ".join(overrides), **({"git_commit": c} if (c := git_commit()) else {}),
        AXES_TAG: json.dumps(axes), COMMON_KEYS_TAG: json.dumps(common_keys), **(tags or {}),
    }))
    params = {k: v for k, v in (common or {}).items()
              if not any(k == a or k.startswith(f"{a}.") for a in axis_keys)}
    params.update({key: axis.split("=", 1)[1] for key, axis in zip(axis_keys, axes)})
    _log_params(mlflow_client, run.info.run_id, params)
    return run.info.run_id


def _log_params(mlflow_client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v[:PARAM_LIMIT]) for k, v in redact_values(params).items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow_client.log_batch(run_id, params=items[start:start + 100])


LAUNCHER_TAG = "kdexp.launcher"  # host:pid of the process that opened a parent run


def _launcher(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


def _close_orphans(mlflow_client, exp_id: str) -> None:
    running = search_all(mlflow_client, [exp_id], "tags.`kdexp.role` = 'sweep' and attributes.status = 'RUNNING'")
    host = socket.gethostname()
    for parent in running:
        where, _, pid = parent.data.tags.get(LAUNCHER_TAG, "").rpartition(":")
        if where == host and pid.isdigit() and not _alive(int(pid)):
            mlflow_client.set_tag(parent.info.run_id, "kdexp.closed_by", f"{_launcher()}: its launcher was gone")
            mlflow_client.set_terminated(parent.info.run_id, "KILLED")


def close_runs(run_ids: list[str], status: str, why: str) -> None:
    """End runs whose own process can no longer (a sweep's job whose worker was killed), the
    reason kept in the tag `kdexp.closed_by`."""
    mlflow_client = client()
    for run_id in run_ids:
        mlflow_client.set_tag(run_id, "kdexp.closed_by", why[:5000])
        mlflow_client.set_terminated(run_id, status)


def note_reused(parent_id: str, overrides: list[str], run_id: str) -> None:
    """A sweep job skipped because its config already FINISHED: point the parent at that run
    (one tag per job, so parallel jobs never overwrite each other)."""
    digest = hashlib.sha1(" ".join(overrides).encode()).hexdigest()[:10]
    client().set_tag(parent_id, f"{REUSED_PREFIX}{digest}", redact(f"{run_id} {' '.join(overrides)}")[:5000])


def find_sweep_parent(experiment: str, sweep_dir: str, uri: str | None = None) -> str | None:
    """The newest parent run tagged with this sweep folder in the store `uri` (resolved as everywhere)."""
    uri = resolve_uri(uri)
    open_tracking_store(uri)  # a job may be the first process to touch the store: create it under the lock
    mlflow_client = client(uri)
    exp = mlflow_client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = mlflow_client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`kdexp.role` = 'sweep' and tags.`kdexp.sweep_dir` = '{sweep_dir}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _objective(job: RunRecord) -> tuple[str, float | None]:
    name = job.tags.get("kdexp.objective", "student_acc")
    return name, job.metrics.get(name)


def _named(job: RunRecord, common_keys: list[str]) -> str:
    """A job named by this sweep's axes: its overrides but those every job of the sweep sets alike
    (a job reused from an earlier sweep carries this sweep's overrides, kdexp/tracking/reader.py)."""
    overrides = job.tags.get("overrides", "")
    return job_name(overrides, common_keys) or overrides or job.name


def _table(jobs: list[RunRecord], common_keys: list[str]) -> str:
    """The parent's description: every job with its status and objective, best first."""
    def rank(job: RunRecord) -> tuple:
        value = _objective(job)[1]
        return (job.status != "FINISHED" or value is None, -(value or 0.0))

    lines = ["| job | status | objective | run |", "|---|---|---|---|"]
    for job in sorted(jobs, key=rank):
        name, value = _objective(job)
        how = " (reused)" if "kdexp.reused_in" in job.tags else ""
        shown = f"{name} = {value:.2f}" if value is not None else "-"
        lines.append(f"| {_named(job, common_keys)} | {job.status}{how} | {shown} | {job.run_id} |")
    return "\n".join(lines)


def end_sweep(parent_id: str, status: str | None = None) -> tuple[str, dict | None]:
    """Close the parent: FINISHED when every job finished, else FAILED (or `status`, e.g. KILLED
    on an interrupt). Every job counts: nested, resumed and reused. Tags and returns the best
    finished job by its objective as {run_id, overrides, name (by the sweep's axes), objective, value}."""
    mlflow_client = client()
    parent = record(mlflow_client.get_run(parent_id))
    jobs = jobs_of(mlflow_client, parent)
    statuses = [job.status for job in jobs]
    if status is None:
        status = "FINISHED" if all(s == "FINISHED" for s in statuses) else "FAILED"
    mlflow_client.set_tag(parent_id, "kdexp.jobs", f"{statuses.count('FINISHED')}/{len(statuses)} finished")
    common_keys = json.loads(parent.tags.get(COMMON_KEYS_TAG, "[]"))
    mlflow_client.set_tag(parent_id, "mlflow.note.content", _table(jobs, common_keys)[:60000])
    best = None
    for job in jobs:
        objective, value = _objective(job)
        if job.status == "FINISHED" and value is not None and (best is None or value > best["value"]):
            best = {"run_id": job.run_id, "overrides": job.tags.get("overrides", ""), "name": _named(job, common_keys),
                    "objective": objective, "value": value}
    if best is not None:
        mlflow_client.set_tag(parent_id, "kdexp.best_run", best["run_id"])
        mlflow_client.set_tag(parent_id, "kdexp.best_overrides", best["overrides"])
        figures = next(j.metrics for j in jobs if j.run_id == best["run_id"])
        _log_metrics(mlflow_client, parent_id, {f"best_{k}": figures[k]
                                                for k in dict.fromkeys([best["objective"], *KEY_METRICS]) if k in figures})
    mlflow_client.set_terminated(parent_id, status)
    return status, best


def _log_metrics(mlflow_client, run_id: str, metrics: dict[str, float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    mlflow_client.log_batch(run_id, metrics=[Metric(k, rounded(k, v), now, 0) for k, v in metrics.items()])


def describe_sweep(parent_id: str, description: str, metrics: dict[str, float]) -> None:
    """The parent's description (the UI's "Description" of a run) and its summary metrics."""
    mlflow_client = client()
    mlflow_client.set_tag(parent_id, "mlflow.note.content", description[:60000])
    if metrics:
        _log_metrics(mlflow_client, parent_id, metrics)


def sweep_link(parent_id: str) -> str:
    """A link to the run list showing the sweep's every job with its key figures (see `ui`)."""
    import mlflow

    mlflow_client = client()
    parent = record(mlflow_client.get_run(parent_id))
    jobs = jobs_of(mlflow_client, parent)
    axes = [override_key(a) for a in json.loads(parent.tags.get(AXES_TAG, "[]"))]
    if not axes:  # a sweeper's own search space: the keys the jobs' names show
        axes = list(dict.fromkeys(override_key(o) for j in jobs for o in j.name.split(" ") if "=" in o))
    return sweep_view(mlflow_client, mlflow.get_tracking_uri(), parent, jobs, axes)
