"""The run writer: one MLflow run's params, per-epoch metrics, tags, artifacts and final status."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import traceback
from pathlib import Path
from typing import Any

from kdexp.tracking.connect import prepare, tracking_store_location
from kdexp.tracking.outage import outage_in_one_line, server_gone
from kdexp.tracking.job_names import job_name_of
from kdexp.tracking.reader import record
from kdexp.tracking.secrets import redact, redact_values, redacted_folder
from kdexp.tracking.ui import TRAINING_VIEW, adapt_note, rounded, run_view, ui_base

PARAM_LIMIT = 6000  # MLflow's limit on a param value
RUN_NAME_LIMIT = 250  # MLflow's runs.name column: PostgreSQL and MySQL refuse longer names (sqlite does not check)
CHANGED_PREFIX = "kdexp.resumed_with."  # tag of a setting changed since the run started


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_held():
    """SIGINT, SIGTERM and SIGHUP ignored inside the block (in the main thread; elsewhere signals cannot be
    set and none is delivered to it anyway), their handlers restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_deferred():
    """A Ctrl-C, SIGTERM or SIGHUP that arrives inside the block takes effect right after it: a
    write to the store is never cut half-way (an interrupt raised inside sqlalchemy can leave a
    transaction open that locks the store for the run's own "KILLED", and the status then says
    nothing true). Main thread only, as signals are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            handler = previous[pending[0]]
            if callable(handler):
                handler(pending[0], None)  # Ctrl-C's KeyboardInterrupt, kdexp's Terminated
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), pending[0])


def _whole(write):
    """The method's store write, with signals deferred until it is done (`signals_deferred`), and
    a server that never came back raised as one line (`connect.outage_in_one_line`)."""
    @functools.wraps(write)
    def deferred(*args, **kwargs):
        with signals_deferred():
            return write(*args, **kwargs)
    return outage_in_one_line(deferred)


class Run:
    """One MLflow run. A resumed run keeps the params it started with (MLflow refuses to change a
    param); a setting that differs on resume is recorded as a tag `kdexp.resumed_with.<key>`."""

    def __init__(self, tracking_cfg, run_name: str | None, tags: dict[str, str],
                 parent_run_id: str | None = None, resume_run_id: str | None = None):
        import mlflow

        self.mlflow = mlflow
        self.uri, self.experiment_id = prepare(tracking_cfg.uri, tracking_cfg.experiment)
        self.resumed = resume_run_id is not None
        tags = redact_values(tags)  # the overrides as typed may hold a password (kdexp/tracking/secrets.py)
        run_name = redact(run_name)[:RUN_NAME_LIMIT] if run_name else run_name
        if resume_run_id:
            self.run = mlflow.start_run(run_id=resume_run_id)
            if parent_run_id and self.run.data.tags.get("mlflow.parentRunId") != parent_run_id:
                # Resumed by a later sweep: it belongs to the sweep that finishes it, and the
                # sweep it started in is remembered.
                old = self.run.data.tags.get("mlflow.parentRunId")
                mlflow.set_tags({"mlflow.parentRunId": parent_run_id, **({"kdexp.first_parent": old} if old else {})})
        else:
            if parent_run_id and not tracking_cfg.run_name:  # a sweep's job: named by what varies
                run_name = job_name_of(mlflow.MlflowClient(), parent_run_id, tags.get("overrides", "")) or run_name
            name = tracking_cfg.run_name or run_name
            self.run = mlflow.start_run(run_name=redact(name)[:RUN_NAME_LIMIT] if name else None, tags=tags,
                                        parent_run_id=parent_run_id)
        self.run_id = self.run.info.run_id
        self.parent_run_id = parent_run_id

    def logged_steps(self, key: str) -> set[int]:
        return {m.step for m in self.mlflow.MlflowClient().get_metric_history(self.run_id, key)}

    # --- logging ---
    @_whole
    def params(self, params: dict[str, Any]) -> list[str]:
        """Log params; on a resumed run only those it lacks, and changed ones as tags (their
        names are returned)."""
        values = {k: v[:PARAM_LIMIT] for k, v in redact_values(params).items()}
        changed: dict[str, str] = {}
        if self.resumed:
            logged = self.mlflow.MlflowClient().get_run(self.run_id).data.params
            changed = {k: v for k, v in values.items() if k in logged and logged[k] != v}
            if changed:
                self.mlflow.set_tags({f"{CHANGED_PREFIX}{k}": f"{v} (was {logged[k]})"[:5000]
                                      for k, v in changed.items()})
            values = {k: v for k, v in values.items() if k not in logged}
        if values:
            self.mlflow.log_params(values)
        return sorted(changed)

    @_whole
    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.mlflow.log_metrics({k.replace("@", "_"): rounded(k, float(v)) for k, v in metrics.items()}, step=step)

    @_whole
    def tags(self, tags: dict[str, str]) -> None:
        self.mlflow.set_tags(redact_values(tags))

    @_whole
    def text(self, text: str, path: str) -> None:
        self.mlflow.log_text(redact(text), path)

    @_whole
    def figure(self, figure, path: str) -> None:
        self.mlflow.log_figure(figure, path)

    @_whole
    def folder(self, folder: str | Path, artifact_path: str) -> None:
        if Path(folder).is_dir():
            with redacted_folder(folder) as copy:  # Hydra's files hold the overrides as typed
                self.mlflow.log_artifacts(str(copy), artifact_path)

    @_whole
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
    @_whole
    def finish(self) -> None:
        if self.resumed:  # an earlier attempt's error no longer describes this run
            client = self.mlflow.MlflowClient()
            if "error" in client.get_run(self.run_id).data.tags:
                client.delete_tag(self.run_id, "error")
        self.mlflow.end_run(status="FINISHED")

    def fail(self, err: BaseException) -> None:
        """End as FAILED (KILLED on Ctrl-C or SIGTERM), the error recorded as a tag and a text
        artifact where the store can still take them (a full disk may refuse the artifact, or
        everything: the status is still attempted, and no failure here hides `err`).

        A second Ctrl-C while this runs (an impatient user presses it twice) is held back until
        it is done: interrupted half-way, the run would be left active, and MLflow's exit handler
        would end it FINISHED — a resumable run presented as complete."""
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        server_gone(err)  # a server given up on: the writes below are tried once each, not retried for minutes
        with signals_held():
            for record in (lambda: self.mlflow.set_tag("error", redact(f"{type(err).__name__}: {err}")[:5000]),
                           lambda: self.mlflow.log_text(redact("".join(traceback.format_exception(err))), "error.txt")):
                try:
                    record()
                except Exception:  # noqa: BLE001 - best effort: the status below matters more
                    pass
            try:
                self.mlflow.end_run(status=status)
            except Exception:  # noqa: BLE001 - the run stays open in the store; `err` is what to report
                pass

    def where(self) -> str:
        """The store, as an absolute path for a local one."""
        return tracking_store_location(self.uri)

    def ui_hint(self) -> str:
        """A link that shows this run's key figures in the run list; a sweep's job links to its
        own page (the sweep prints the link to all its jobs)."""
        if self.parent_run_id:
            link = f"{ui_base(self.uri)}/#/experiments/{self.experiment_id}/runs/{self.run_id}?{TRAINING_VIEW}"
        else:
            client = self.mlflow.MlflowClient()
            link = run_view(client, self.uri, record(client.get_run(self.run_id)))
        return f"{link}  {adapt_note(self.uri)}"
