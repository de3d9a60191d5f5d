"""RKD, PKT, SP, CC, NST, KDSVD and VID from the command line on the embedded data (a CNN teacher, a
CIFAR ResNet student, a slice, one epoch each phase): one sweep runs all seven to FINISHED with a
finite KD gain; a method with trainable parts (VID) resumes exactly after kill -9. (Pairs a method
cannot use are refused by the pre-flight check: tests/test_methods_relational.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import FAST
from helpers import finish, kdexp, reference_and_killed, runs_of, start_kdexp, student_checkpoint

pytestmark = pytest.mark.slow

METHODS = ["rkd", "pkt", "sp", "cc", "nst", "kdsvd", "vid"]
# The CNN's two stages have the widths of the ResNet's first two, which the methods pair with them
# (the references' zip; KDSVD pairs layers of equal width).
PAIR = ["model@student=resnet8", "student.widths=[8,8,16,32]", "teacher.channels=[8,16]"]
SMALL = [*FAST, "data.limit_train=256", "tracking.log_model=false"]


def test_each_method_finishes_from_the_command_line_with_a_finite_kd_gain(tmp_path):
    kdexp(["-m", "hint=" + ",".join(METHODS), *PAIR, *SMALL], tmp_path, check=True)
    jobs = {r.data.params["hint.name"]: r for r in runs_of(tmp_path) if r.data.tags.get("kdexp.role") == "job"}
    assert sorted(jobs) == sorted(METHODS)
    for name, run in jobs.items():
        assert run.info.status == "FINISHED", name
        assert math.isfinite(run.data.metrics["kd_gain"]), name
        assert math.isfinite(run.data.metrics["student/hint"]) and run.data.metrics["student/hint"] != 0, name
        assert run.data.tags["hint"] == name


def test_vid_resumes_its_regressors_and_variances_exactly_after_kill_9(tmp_path):
    args = [*PAIR, *FAST, "hint=vid", "data.limit_train=256", "trainer.epochs=3", "trainer.baseline=false",
            "tracking.log_model=false"]
    reference_dir, crash_dir = reference_and_killed(args, tmp_path, timeout=600)
    saved = torch.load(student_checkpoint(crash_dir), weights_only=True)
    assert saved["epoch"] < 3
    assert {"log_scales.0", "log_scales.1", "regressors.0.0.weight"} <= set(saved["parts"]["hint"])
    assert "resuming MLflow run" in finish(start_kdexp(args, crash_dir), timeout=600)
    [reference], [crashed] = runs_of(reference_dir), runs_of(crash_dir)
    assert reference.info.status == crashed.info.status == "FINISHED"
    history = [k for k in reference.data.metrics if k.startswith("student/")]
    assert "student/hint" in history
    assert {k: crashed.data.metrics[k] for k in history} == {k: reference.data.metrics[k] for k in history}

