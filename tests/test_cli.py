"""The command line itself (bad inputs: tests/test_bad_inputs.py)."""

import os
import subprocess
import sys

import pytest


def kdexp(args, cwd, timeout=120, **env):
    environ = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", **env}
    environ.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "kdexp", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=timeout)


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = kdexp(["--cfg", "job", "loss.temperature=8"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "temperature: 8" in result.stdout and "hydra" not in result.stdout.split("\n")[0]


def test_help_lists_the_config_groups(tmp_path):
    result = kdexp(["--help"], tmp_path)
    assert result.returncode == 0
    for group in ("loss:", "data:", "model:"):
        assert group in result.stdout
