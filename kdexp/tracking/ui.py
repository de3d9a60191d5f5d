"""What the MLflow UI shows: experiments open in its model-training view, and links to a saved
view of the run list with every job's key figures as columns.

MLflow 3 picks an experiment's view from the experiment tag `mlflow.experimentKind`; without it
the UI guesses, and an experiment with no traces opens on the GenAI overview. (MLflow 3.17.2
checked in headless Chromium: the tag makes the experiment a training one, but a plain
`#/experiments/<id>` still follows the browser's remembered GenAI / Model training switch, so
every link kdexp prints also names the view.) A link to results
uses the UI's own shared views: an experiment tag `mlflow.sharedViewState.<key>` holding the run
list's URL state (filter, sort) and UI state (columns, expanded rows) as JSON, opened by
`#/experiments/<id>/runs?viewStateShareKey=<key>` (what the UI's "Share" button writes; checked
against MLflow 3.17's bundled UI). No clicking: the columns are already there.
"""

from __future__ import annotations

import json
import re

from kdexp.tracking.secrets import redact_uri

KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"  # the UI's "Model training" experiments
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
# The kind tag alone does not win over the UI's own GenAI / Model training switch (remembered in
# the browser, GenAI in a fresh one); a link that names the view lands on the runs either way.
TRAINING_VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default
KEY_METRICS = ("student_acc", "baseline_acc", "kd_gain")  # the figures every kdexp result has first
MAX_LISTED_RUNS = 100
DECIMALS = 4  # accuracies are percentages: 4 decimals is far below any real difference  # beyond this, a sweep's view filters on the parent instead of listing runs


def mark_training(client, experiment_id: str, tags: dict[str, str] | None = None) -> None:
    """Tag an experiment as a model-training one, unless it already says what it is."""
    if (tags or {}).get(KIND_TAG) is None:
        client.set_experiment_tag(experiment_id, KIND_TAG, TRAINING_KIND)


def ui_base(uri: str) -> str:
    """The UI of a tracking server is the server; a local store's is `mlflow ui` in its folder."""
    return redact_uri(uri).rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def adapt_note(uri: str) -> str:
    """How to open a printed link somewhere else than the default `mlflow ui`."""
    if uri.startswith(("http://", "https://")):
        return "(the tracking server's own UI)"
    return (f"(after `mlflow ui` in this folder, or `mlflow ui --backend-store-uri {uri}`; "
            f"another host or port: replace {LOCAL_UI})")


def columns(metrics: list[str], params: list[str]) -> list[str]:
    """Run-list column ids, as the UI names them: ``metrics.`kd_gain` ``, ``params.`loss.alpha` ``."""
    return [f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in params]


def share_view(client, experiment_id: str, key: str, search_filter: str, shown: list[str],
               order_by: str | None = None, expanded: list[str] = ()) -> None:
    """Save a run-list view under `key` as an experiment tag the UI opens by `viewStateShareKey`."""
    metrics = [c.removeprefix("metrics.`").removesuffix("`") for c in shown if c.startswith("metrics.")]
    state = {"searchFilter": search_filter, "orderByAsc": False, "selectedColumns": shown,
             "runsExpanded": {run_id: True for run_id in expanded},
             # The chart view (Compare) draws every metric, sections in alphabetical order, so
             # `baseline/loss` came first; its filter (a regex on metric names) keeps the key ones.
             "chartsSearchFilter": "^(" + "|".join(re.escape(m) for m in metrics) + ")$" if metrics else ""}
    if order_by:
        state["orderByKey"] = f"metrics.`{order_by}`"
    client.set_experiment_tag(experiment_id, f"{SHARED_VIEW_PREFIX}{key}", json.dumps(state))


def view_link(uri: str, experiment_id: str, key: str) -> str:
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}&viewStateShareKey={key}"


def rounded(key: str, value: float) -> float:
    """Accuracies and gains as the UI should show them: `-1.7`, not `-1.7000000000000028`.
    Only what is logged is rounded; kdexp computes with the full values."""
    return round(value, DECIMALS) if any(word in key for word in ("acc", "gain")) else value


def present_metrics(runs: list, objective: str | None) -> list[str]:
    """The key figures the runs have (objective first when it is not one of them). Runs here
    and below are `RunRecord`s (run_id, experiment_id, tags, params, metrics)."""
    found = [m for m in KEY_METRICS if any(m in r.metrics for r in runs)]
    if objective and objective not in found:
        found.insert(0, objective)
    return found


def run_view(client, uri: str, run) -> str:
    """A link to the run list showing just this run with its key figures; returns the link."""
    key = f"kdexp-{run.run_id}"
    shown = columns(present_metrics([run], run.tags.get("kdexp.objective")), [])
    share_view(client, run.experiment_id, key, f"attributes.run_id = '{run.run_id}'", shown)
    return view_link(uri, run.experiment_id, key)


def _param_of(axis: str, jobs: list) -> str | None:
    """The param that shows an axis: the key itself, or a group choice's `name` (`loss=self` →
    `loss.name`, `model@student=cnn` → `student.name`)."""
    for candidate in (axis, f"{axis.rpartition('@')[2] if '@' in axis else axis}.name"):
        if any(candidate in j.params for j in jobs):
            return candidate
    return None


def sweep_view(client, uri: str, parent, jobs: list, axes: list[str]) -> str:
    """A link to the run list showing the sweep's parent and every job, with the jobs' key figures
    and swept params as columns, best first; returns the link."""
    run_ids = [parent.run_id] + [j.run_id for j in jobs]
    if len(run_ids) <= MAX_LISTED_RUNS:  # reused jobs are no children of this parent: list them
        search = "attributes.run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")"
    else:
        search = f"tags.`mlflow.parentRunId` = '{parent.run_id}'"
    objectives = {j.tags.get("kdexp.objective") for j in jobs} - {None}
    objective = objectives.pop() if len(objectives) == 1 else "student_acc"
    params = [p for p in (_param_of(a, jobs) for a in axes) if p]
    key = f"kdexp-{parent.run_id}"
    share_view(client, parent.experiment_id, key, search, columns(present_metrics(jobs, objective), params),
               order_by=objective, expanded=[parent.run_id])
    return view_link(uri, parent.experiment_id, key)
