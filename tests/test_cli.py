"""The command line: bad input exits non-zero at once with one line and no traceback."""

import os
import subprocess
import sys

import pytest


def kdexp(args, cwd, timeout=120, **env):
    environ = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", **env}
    environ.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "kdexp", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["loss.temperature=0"], "loss.temperature"),
        (["loss.alpha=1.5"], "loss.alpha"),
        (["loss=nonexistent"], "loss=nonexistent"),
        (["model@teacher=nope"], "model@teacher=nope"),
        (["trainer.epochs=0"], "trainer.epochs"),
        (["+loss.temprature=3"], "loss.temprature"),
        (["trainer.device=cuda"] if not __import__("torch").cuda.is_available() else ["trainer.device=tpu"],
         "trainer.device"),
        (["data=mnist", "data.root=empty_dir"], "data.name=mnist"),
    ],
)
def test_bad_input_fails_fast_with_one_line(tmp_path, args, needle):
    result = kdexp(args, tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0] and "Traceback" not in result.stderr
    assert lines[0].startswith("kdexp: error:")


def test_bad_input_leaves_no_run_behind(tmp_path):
    kdexp(["loss.alpha=1.5"], tmp_path)
    assert not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.pt"))


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = kdexp(["--cfg", "job", "loss.temperature=8"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "temperature: 8" in result.stdout and "hydra" not in result.stdout.split("\n")[0]


def test_help_lists_the_config_groups(tmp_path):
    result = kdexp(["--help"], tmp_path)
    assert result.returncode == 0
    for group in ("loss:", "data:", "model:"):
        assert group in result.stdout
