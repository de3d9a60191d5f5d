"""Every test runs in its own folder against its own store, and leaves MLflow's global state as it
found it (the autouse fixture `isolated` in conftest.py)."""

import os
from pathlib import Path

import pytest

from helpers import REPOSITORY, kdexp_env, sqlite_uri


def test_a_test_runs_in_its_own_folder_with_its_own_store(tmp_path):
    assert Path.cwd() == tmp_path and not Path.cwd().is_relative_to(REPOSITORY)
    assert os.environ["MLFLOW_TRACKING_URI"] == sqlite_uri(tmp_path)
    assert "KDEXP_PARENT_RUN_ID" not in os.environ and "HYDRA_FULL_ERROR" not in os.environ


@pytest.fixture(scope="module")
def leaked_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('elsewhere') / 'other.db'}"


def test_a_test_that_points_mlflow_elsewhere(leaked_uri):
    import mlflow

    mlflow.set_tracking_uri(leaked_uri)  # also exports MLFLOW_TRACKING_URI
    assert os.environ["MLFLOW_TRACKING_URI"] == leaked_uri


def test_the_next_test_is_back_on_its_own_store(tmp_path, leaked_uri):
    import mlflow

    assert mlflow.get_tracking_uri() == sqlite_uri(tmp_path) != leaked_uri
    assert mlflow.active_run() is None


def test_subprocesses_get_the_folders_store_and_no_inherited_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("KDEXP_PARENT_RUN_ID", "0123")
    env = kdexp_env(tmp_path / "job", {"COLUMNS": "100", "HOME": None})
    assert env["MLFLOW_TRACKING_URI"] == sqlite_uri(tmp_path / "job")
    assert "KDEXP_PARENT_RUN_ID" not in env and "HOME" not in env and env["COLUMNS"] == "100"


def test_the_sweep_variable_the_fixture_clears_is_kdexps():
    from helpers import FOREIGN_ENV, SWEEP_ENV
    from kdexp import tracking

    assert SWEEP_ENV == tracking.SWEEP_ENV and SWEEP_ENV in FOREIGN_ENV
