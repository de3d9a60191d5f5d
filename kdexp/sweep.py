"""Multirun → MLflow structure: a Hydra callback that opens one parent run per sweep.

It runs in the launching process, so it also creates the store and the experiment before any
job starts (concurrent first-time sqlite migrations race). Jobs find their parent through the
environment (inherited by local and joblib workers) or, on other machines, by the sweep folder tag.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def sweep_dir_of(hydra_cfg) -> str:
    return str(Path(hydra_cfg.sweep.dir).resolve())


class MlflowSweep(Callback):
    def __init__(self) -> None:
        self.parent_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from kdexp import tracking
        from kdexp.cli import fail
        from kdexp.config import ConfigError, validate

        try:  # the base config of the sweep: a bad value stops here, before any job
            typed = validate(config)
        except ConfigError as err:
            fail(str(err))
        overrides = list(config.hydra.overrides.task)
        self.parent_id = tracking.start_sweep(typed.tracking.uri, typed.tracking.experiment,
                                              sweep_dir_of(config.hydra), overrides)
        os.environ[tracking.SWEEP_ENV] = self.parent_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from kdexp import tracking

        if self.parent_id is not None:
            status, best = tracking.end_sweep(self.parent_id)
            print(f"kdexp: sweep parent run {self.parent_id} {status}")
            if best is not None:
                print(f"kdexp: best job: {best['overrides']} → {best['objective']} = {best['value']:.2f} "
                      f"(run {best['run_id']}); compare all jobs with: kdexp-report")
            os.environ.pop(tracking.SWEEP_ENV, None)


def parent_for_job(hydra_cfg, experiment: str) -> str | None:
    """The parent run of this job when it runs inside a multirun, else None."""
    from hydra.types import RunMode

    from kdexp import tracking

    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return os.environ.get(tracking.SWEEP_ENV) or tracking.find_sweep_parent(experiment, sweep_dir_of(hydra_cfg))


def threads_per_job(hydra_cfg) -> int:
    """Threads for one job of a parallel sweep: the cores shared by the launcher's concurrent jobs."""
    launcher = hydra_cfg.get("launcher", {}) or {}
    jobs = launcher.get("n_jobs", 1) or 1
    if jobs == -1:
        jobs = os.cpu_count() or 1
    return max(1, (os.cpu_count() or 1) // max(1, int(jobs)))
