"""Shared fixtures: compose configs the way the CLI does, shrink the work, isolate every test.

Every test runs in its own empty folder with its own sqlite MLflow store (`isolated`, autouse), so
no test writes `mlflow.db`, `mlruns/` or `outputs/` into the repository or sees another test's runs.
`kdexp(...)` (tests/helpers.py, with the other helpers the test files share) runs the real command
line in a subprocess, in the same kind of isolation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from helpers import FOREIGN_ENV, REPOSITORY, sqlite_uri
from kdexp.config.paths import CONFIG_DIR
from kdexp.distill import catalog  # noqa: F401  (families and terms register, as the CLI does)
from kdexp.config.sections import validate

# Small and fast: a slice of the embedded data, one epoch each, no progress bars.
FAST = [
    "data.limit_train=512",
    "trainer.epochs=1",
    "trainer.teacher_epochs=1",
    "trainer.progress=false",
    "data.eval_batch_size=500",
]


# What a run leaves in its working folder; the suite must leave none of it in the repository.
LITTER = ("mlflow.db", "mlruns", "outputs")
_LITTER_BEFORE = {name for name in LITTER if (REPOSITORY / name).exists()}


def pytest_sessionfinish(session, exitstatus):
    """Fail the session when a test wrote a store or outputs into the repository."""
    left = sorted(name for name in LITTER if (REPOSITORY / name).exists() and name not in _LITTER_BEFORE)
    if left:
        print(f"\nkdexp tests: the suite wrote {', '.join(left)} into {REPOSITORY}; a test escaped its folder")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch):
    """The test's working folder and MLflow store are tmp_path; MLflow's global state is reset after."""
    monkeypatch.chdir(tmp_path)
    for name in FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(tmp_path))
    yield tmp_path
    if "mlflow" in sys.modules:  # only tests that imported MLflow can have left state in it
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)  # also unsets the variable it exported; monkeypatch restores ours


@pytest.fixture
def store(isolated: Path) -> str:
    """The URI of the test's own sqlite MLflow store (in tmp_path, also the working folder)."""
    return sqlite_uri(isolated)


def compose_raw(overrides: list[str] = ()) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def compose_cfg(overrides: list[str] = (), fast: bool = True) -> DictConfig:
    """The validated config for `overrides` (plus FAST unless fast=False)."""
    return validate(compose_raw((FAST if fast else []) + list(overrides)))


def run_experiment(overrides: list[str] = (), fast: bool = True):
    """Run one experiment in-process; returns (objective, the finished MLflow run)."""
    import mlflow

    from kdexp.run import experiment

    cfg = compose_cfg(overrides, fast)
    objective = experiment.run(cfg, list(overrides))
    run = mlflow.last_active_run()
    return objective, mlflow.get_run(run.info.run_id)
