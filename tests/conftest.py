"""Shared fixtures: compose configs the way the CLI does, shrink the work, isolate the MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from kdexp.cli import CONFIG_DIR
from kdexp.config import validate

# Small and fast: a slice of the embedded data, one epoch each, no progress bars.
FAST = [
    "data.limit_train=512",
    "trainer.epochs=1",
    "trainer.teacher_epochs=1",
    "trainer.progress=false",
    "data.eval_batch_size=500",
]


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> str:
    """A fresh sqlite MLflow store in tmp_path; the test's working folder is tmp_path too."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def compose_raw(overrides: list[str] = ()) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def compose_cfg(overrides: list[str] = (), fast: bool = True) -> DictConfig:
    """The validated config for `overrides` (plus FAST unless fast=False)."""
    return validate(compose_raw((FAST if fast else []) + list(overrides)))


def run_experiment(overrides: list[str] = (), fast: bool = True):
    """Run one experiment in-process; returns (objective, the finished MLflow run)."""
    import mlflow

    from kdexp import experiment

    cfg = compose_cfg(overrides, fast)
    objective = experiment.run(cfg, list(overrides))
    run = mlflow.last_active_run()
    return objective, mlflow.get_run(run.info.run_id)
