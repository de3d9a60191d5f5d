"""Every distillation method end to end on the embedded data (1 epoch, a slice: slow), the default
reproducing the loss of before, the teacher shared by the methods of a sweep, and the guard against
a diverged run."""

from __future__ import annotations

import math

import mlflow
import pytest
import torch

from conftest import FAST, compose_cfg, run_experiment
from helpers import kdexp, runs_of
from kdexp.distill.functional import hinton
from kdexp.run.loop import Diverged

SMALL = ["tracking.log_model=false", "data.limit_train=256"]

METHODS = [
    ["kd=hinton"], ["kd=dkd"], ["kd=dist"], ["kd=ls"], ["kd=ctkd"],
    ["kd=hinton", "kd.standardize=true"], ["kd=dkd", "kd.standardize=true"],
    ["hint=fitnets"],
    ["hint=at", "model@student=cnn", "student.channels=[8,16]"],
    ["hint=at", "model@teacher=resnet8", "model@student=resnet8", "student.widths=[8,8,16,32]"],
    ["kd=dkd", "hint=fitnets", "hint.weight=1"],
    ["loss=self", "loss.mode=born_again", "loss.generations=1", "kd=dist", "hint=at"],
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", METHODS, ids=[" ".join(m) for m in METHODS])
def test_each_method_finishes_with_a_finite_kd_gain_and_names_itself(store, overrides):
    _, run = run_experiment([*overrides, *SMALL])
    assert run.info.status == "FINISHED"
    assert math.isfinite(run.data.metrics["kd_gain"])
    cfg = compose_cfg(overrides)
    assert run.data.params["kd.name"] == cfg.kd.name and run.data.params["hint.name"] == cfg.hint.name
    assert run.data.tags["kd"] == cfg.kd.name


def test_the_default_terms_compute_the_loss_of_before_to_the_last_bit(store):
    """The student phase through the ComposedLoss (kd=hinton, hint=none) against the loss kdexp had
    before terms existed, `losses.hinton` on the cached teacher logits, on the same batches."""
    from kdexp.data import memory as data_mod
    from kdexp.run.context import Context
    from kdexp.distill.compose import ComposedLoss
    from kdexp.distill.phase import Clock

    cfg = compose_cfg([])
    dataset = data_mod.load(cfg.data)

    class NoRun:
        def tags(self, *a):
            pass

    ctx = Context(cfg, data_mod.MemorySource(dataset, cfg.data, torch.device("cpu")), NoRun(), torch.device("cpu"))
    teacher = ctx.build(cfg.teacher, "teacher").eval().requires_grad_(False)
    student = ctx.build(cfg.student, "student")
    cached = ctx.frozen_logits(teacher)
    with ComposedLoss(cfg, student, teacher, lambda: ctx.frozen_logits(teacher), ctx.probe_batch(),
                      ctx.seed("student/terms"), ctx.device, Clock()) as composed:
        assert composed.parts == {} and composed.student_capture is None
        for start in (0, 64, 128):
            idx = torch.arange(start, start + 64)
            x, y = dataset.train.x[idx], dataset.train.y[idx]
            new = composed.step_loss(x, y, idx)
            old = hinton(student(x), cached(x, idx), y, cfg.loss.temperature, cfg.loss.alpha)
            assert list(new) == list(old) and all(torch.equal(new[k], old[k]) for k in old)


@pytest.mark.slow
def test_a_teacher_at_chance_level_fails_the_run_before_the_student(store):
    with pytest.raises(Diverged, match=r"teacher ended at chance level .*likely cause: optim.lr"):
        run_experiment(["optim.lr=1e-12", *SMALL])
    runs = mlflow.search_runs(experiment_names=["kdexp"], output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not any(k.startswith("student/") for k in runs[0].data.metrics)


PHASES = ("teacher", "baseline", "student")  # the line the console prints as each phase starts


@pytest.mark.slow
def test_a_huge_learning_rate_fails_in_one_line_naming_optim_lr(tmp_path):
    result = kdexp([*FAST, *SMALL, "optim.lr=1e6"], tmp_path, timeout=900)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("kdexp: error:") and "optim.lr" in lines[0], result.stderr
    # The teacher diverges in its first epoch: no phase starts after it, so no student is distilled.
    assert [line for line in result.stdout.splitlines() if line in PHASES] == ["teacher"], result.stdout
    runs = runs_of(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not any(k.startswith(("baseline/", "student/")) for k in runs[0].data.metrics), runs[0].data.metrics


@pytest.mark.slow
def test_a_sweep_over_methods_and_seeds_trains_one_teacher_per_seed(tmp_path):
    result = kdexp(["-m", "kd=hinton,dkd", "seed=0,1", *FAST, *SMALL], tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    entries = runs_of(tmp_path, "kdexp-store")
    teachers = [r for r in entries if r.data.tags.get("kdexp.label", "").startswith("teacher")]
    assert len(teachers) == 2
    jobs = [r for r in runs_of(tmp_path) if r.data.tags.get("kdexp.role") == "job"]
    assert sorted((r.data.params["kd.name"], r.data.params["seed"]) for r in jobs) == \
        [("dkd", "0"), ("dkd", "1"), ("hinton", "0"), ("hinton", "1")]
