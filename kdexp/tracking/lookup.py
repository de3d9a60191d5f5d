"""Run lookup: the earlier run of a config, found by its identity tag."""

from __future__ import annotations

from dataclasses import dataclass

from kdexp.tracking.connect import client


@dataclass
class PreviousRun:
    run_id: str
    status: str
    objective: float


def find_run(experiment: str, run_key: str) -> PreviousRun | None:
    """The latest top-level run of this config (tag `kdexp.run_key`) in the experiment, if any."""
    mlflow_client = client()
    exp = mlflow_client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = mlflow_client.search_runs([exp.experiment_id], filter_string=f"tags.`kdexp.run_key` = '{run_key}'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run = runs[0]
    objective = run.data.metrics.get(run.data.tags.get("kdexp.objective", "student_acc"), float("nan"))
    return PreviousRun(run.info.run_id, run.info.status, objective)
