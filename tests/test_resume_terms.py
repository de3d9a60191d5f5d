"""A run whose terms own trainable parts (the FitNets connector, CTKD's temperature) resumes
exactly after kill -9: the parts are in the phase's checkpoints."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import torch

from conftest import FAST


def _cli(args, cwd):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db"}
    return subprocess.Popen([sys.executable, "-m", "kdexp", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _runs(cwd):
    mlflow.set_tracking_uri(f"sqlite:///{cwd}/mlflow.db")
    return mlflow.search_runs(experiment_names=["kdexp"], output_format="list")


@pytest.mark.slow
@pytest.mark.parametrize("method", [["hint=fitnets", "hint.weight=1"], ["kd=ctkd"]], ids=["fitnets", "ctkd"])
def test_kill_9_mid_student_then_rerun_resumes_to_identical_metrics(tmp_path, method):
    args = [*FAST, *method, "data.limit_train=1000", "trainer.epochs=4", "tracking.log_model=false"]
    reference_dir, crash_dir = tmp_path / "reference", tmp_path / "crash"
    reference_dir.mkdir(), crash_dir.mkdir()
    assert _cli(args, reference_dir).wait(timeout=300) == 0

    victim = _cli(args, crash_dir)
    deadline = time.time() + 300
    while not list(crash_dir.glob("outputs/checkpoints/*/*/student.pt")):
        assert victim.poll() is None, victim.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    saved = torch.load(next(crash_dir.glob("outputs/checkpoints/*/*/student.pt")), weights_only=True)
    assert saved["epoch"] < 4 and set(saved["parts"]) in ({"hint"}, {"kd"})

    resumed = _cli(args, crash_dir)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert "resuming MLflow run" in out
    reference, crashed = _runs(reference_dir), _runs(crash_dir)
    assert crashed[0].info.status == "FINISHED"
    history = [k for k in reference[0].data.metrics if k.startswith("student/")]
    assert history and {k: crashed[0].data.metrics[k] for k in history} == \
        {k: reference[0].data.metrics[k] for k in history}
    assert crashed[0].data.metrics["student_acc"] == reference[0].data.metrics["student_acc"]
