"""Methods with a stage of their own before distillation (kdexp/distill/methods/base.py MethodStage):
FT's paraphraser (teacher-only: from the model store when a sweep repeats it) and FSP's
initialisation of the student, against RepDistiller's formulas written again."""

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import compose_cfg, run_experiment
from kdexp.config.checks import ConfigError
from kdexp.distill.methods import Outputs
from kdexp.distill.methods.ab import ABConfig, ActivationBoundaries
from kdexp.distill.methods.fsp import FSP, FSPConfig, fsp_loss, fsp_matrix
from kdexp.distill.methods.ft import FactorTransfer, FTConfig, factor_loss
from kdexp.distill.phase import Clock


def _reference_factor_loss(f_s, f_t):
    """RepDistiller distiller_zoo/FT.py factor_loss (p1 = 2, p2 = 1), as written there."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    factor = lambda f: F.normalize(f.pow(2).mean(1).view(f.size(0), -1))  # noqa: E731
    return (factor(f_s) - factor(f_t)).abs().mean()


def _reference_fsp(g):
    """RepDistiller distiller_zoo/FSP.py compute_fsp, as written there."""
    out = []
    for i in range(len(g) - 1):
        bot, top = g[i], g[i + 1]
        b_h, t_h = bot.shape[2], top.shape[2]
        if b_h > t_h:
            bot = F.adaptive_avg_pool2d(bot, (t_h, t_h))
        elif b_h < t_h:
            top = F.adaptive_avg_pool2d(top, (b_h, b_h))
        bot, top = bot.unsqueeze(1), top.unsqueeze(2)
        bot = bot.view(bot.shape[0], bot.shape[1], bot.shape[2], -1)
        top = top.view(top.shape[0], top.shape[1], top.shape[2], -1)
        out.append((bot * top).mean(-1))
    return out


def test_factor_loss_matches_the_reference_and_vanishes_on_scaled_maps():
    f_s, f_t = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    assert factor_loss(f_s, f_t).item() == pytest.approx(_reference_factor_loss(f_s, f_t).item(), rel=1e-6)
    assert factor_loss(f_t, 3 * f_t).item() == pytest.approx(0.0, abs=1e-7)


def test_fsp_matches_the_reference_matrices_and_a_hand_derived_one():
    g = [torch.randn(2, 3, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)]
    h = [torch.randn(2, 3, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)]
    ref_g = _reference_fsp(g)
    # the reference's matrix is (C_top, C_bot); kdexp's is (C_a, C_b) = its transpose: same loss
    torch.testing.assert_close(fsp_matrix(g[0], g[1]), ref_g[0].transpose(1, 2))
    reference = sum((s - t).pow(2).mean() for s, t in zip(ref_g, _reference_fsp(h)))
    assert fsp_loss(g, h).item() == pytest.approx(reference.item(), rel=1e-6)
    a, b = torch.ones(1, 1, 2, 2), torch.arange(4.0).view(1, 1, 2, 2)  # (0 + 1 + 2 + 3) / 4
    assert fsp_matrix(a, b).item() == 1.5


def test_ft_declares_a_teacher_only_stage_that_trains_the_paraphraser_alone():
    m = FactorTransfer(OmegaConf.structured(FTConfig(student=["s"], teacher=["t"], init_epochs=2)), None)
    f_s, f_t = torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 6, 4, 4)
    s, t = Outputs(None, {"s": f_s}), Outputs(None, {"t": f_t})
    m.setup(s, t)
    [stage] = m.stages(None)
    assert (stage.name, stage.epochs, stage.teacher_only, list(stage.trains)) == ("ft_paraphraser", 2, True, ["paraphraser"])
    assert stage.identity == {"teacher": ["t"], "rate": 0.5}
    rec = stage.loss(None, Clock(), None, t)["loss"]
    rec.backward()
    assert all(p.grad is not None for p in m.paraphraser.parameters())
    hint = m(None, Clock(), s, t)["hint"]
    reference = _reference_factor_loss(m.translator(f_s), m.paraphraser.encoder(f_t))
    assert hint.item() == pytest.approx(reference.item(), rel=1e-6)
    assert m.paraphraser.encoder[-2].out_channels == 3  # factor rate 0.5 of the teacher's 6 channels
    assert (FTConfig().weight, FTConfig().rate, FTConfig().init_epochs) == (200.0, 0.5, None)


def test_fsp_refuses_unequal_channels_in_one_line():
    m = FSP(OmegaConf.structured(FSPConfig(student=["a", "b"], teacher=["c", "d"])), None)
    s = Outputs(None, {"a": torch.zeros(2, 3, 4, 4), "b": torch.zeros(2, 4, 4, 4)})
    t = Outputs(None, {"c": torch.zeros(2, 3, 4, 4), "d": torch.zeros(2, 8, 4, 4)})
    with pytest.raises(ConfigError, match="hint=fsp needs feature maps with as many channels on both sides"):
        m.setup(s, t)
    assert (FSPConfig().weight, FSPConfig().init_epochs) == (0.0, None)
    with pytest.raises(ConfigError, match=r"hint\.init_epochs=0 is not allowed"):
        compose_cfg(["hint=fsp", "hint.init_epochs=0"])


class _ReferenceAB:
    """RepDistiller distiller_zoo/AB.py ABLoss, as written there."""

    def __init__(self, feat_num, margin=1.0):
        self.w, self.margin = [2 ** (i - feat_num + 1) for i in range(feat_num)], margin

    def __call__(self, g_s, g_t):
        bsz = g_s[0].shape[0]
        losses = [w * self.criterion(s, t) for w, s, t in zip(self.w, g_s, g_t)]
        return [l / bsz / 1000 * 3 for l in losses]

    def criterion(self, source, target):
        loss = ((source + self.margin) ** 2 * ((source > -self.margin) & (target <= 0)).float() +
                (source - self.margin) ** 2 * ((source <= self.margin) & (target > 0)).float())
        return torch.abs(loss).sum()


def test_ab_matches_the_reference_and_its_stage_trains_student_and_connectors():
    names_s, names_t = ["a", "b", "c"], ["d", "e", "f"]
    m = ActivationBoundaries(OmegaConf.structured(ABConfig(student=names_s, teacher=names_t, init_epochs=2)), None)
    fs = [torch.randn(3, 4, 8, 8), torch.randn(3, 8, 4, 4), torch.randn(3, 8, 2, 2)]
    ft = [torch.randn(3, 4, 8, 8), torch.randn(3, 16, 2, 2), torch.randn(3, 8, 2, 2)]
    fs = [f.requires_grad_() for f in fs]
    s, t = Outputs(None, dict(zip(names_s, fs))), Outputs(None, dict(zip(names_t, ft)))
    m.setup(s, t)
    assert isinstance(m.connectors[0], torch.nn.Identity) and isinstance(m.connectors[2], torch.nn.Identity)
    assert m.connectors[1][0].stride == (2, 2)  # a halved map: RepDistiller's strided 3x3
    hint = m(None, Clock(), s, t)["hint"]
    reference = sum(_ReferenceAB(3)([c(f) for c, f in zip(m.connectors, fs)], ft))
    assert hint.item() == pytest.approx(reference.item(), rel=1e-6)
    student = torch.nn.Linear(1, 1)
    [stage] = m.stages(student)
    assert (stage.name, stage.epochs, stage.teacher_only) == ("ab_init", 2, False)
    assert stage.trains["student"] is student and stage.trains["connectors"] is m.connectors
    stage.loss(None, Clock(), s, t)["loss"].backward()
    assert all(f.grad is not None for f in fs) and all(p.grad is not None for p in m.connectors.parameters())
    assert (ABConfig().weight, ABConfig().init_epochs, ABConfig().margin) == (0.0, None, 1.0)


SMALL = ["tracking.log_model=false", "data.limit_train=128", "loss.alpha=1"]


@pytest.mark.slow
def test_ft_paraphraser_is_trained_once_and_reused_from_the_model_store(store):
    ft = ["hint=ft", "hint.init_epochs=1", "model@student=cnn", "student.channels=[8,16]", *SMALL]
    _, first = run_experiment([*ft, "hint.weight=200"])
    _, second = run_experiment([*ft, "hint.weight=100"])  # a sweep over the weight: the same paraphraser
    assert first.info.status == second.info.status == "FINISHED"
    assert first.data.tags["kdexp.ft_paraphraser.source"] == "trained"
    assert second.data.tags["kdexp.ft_paraphraser.source"] == "store"
    assert second.data.metrics["ft_paraphraser/loss"] == first.data.metrics["ft_paraphraser/loss"]
    assert math.isfinite(second.data.metrics["kd_gain"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fsp", "ab"])
def test_an_init_stage_trains_the_student_in_its_own_logged_phase(store, method):
    _, run = run_experiment([f"hint={method}", "hint.init_epochs=1", "model@student=cnn", *SMALL])
    assert run.info.status == "FINISHED" and math.isfinite(run.data.metrics["kd_gain"])
    assert math.isfinite(run.data.metrics[f"{method}_init/{method}"]) and f"{method}_init/test_acc" not in run.data.metrics


@pytest.mark.slow
def test_a_run_killed_in_its_init_stage_resumes_to_identical_metrics(tmp_path):
    import signal
    import time

    from conftest import FAST
    from helpers import finish, runs_of, start_kdexp

    args = [*FAST, "hint=fsp", "hint.init_epochs=2", "model@student=cnn", "trainer.baseline=false",
            "data.limit_train=256", *SMALL[:1]]
    reference_dir, crash_dir = tmp_path / "reference", tmp_path / "crash"
    reference_dir.mkdir(), crash_dir.mkdir()
    finish(start_kdexp(args, reference_dir), timeout=600)
    victim = start_kdexp(args, crash_dir)
    deadline = time.time() + 600
    while not list(crash_dir.glob("outputs/checkpoints/*/*/fsp_init.pt")):
        assert victim.poll() is None, victim.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    saved = torch.load(next(crash_dir.glob("outputs/checkpoints/*/*/fsp_init.pt")), weights_only=True)
    assert saved["epoch"] < 2 and "student" in saved["models"]
    assert "resuming MLflow run" in finish(start_kdexp(args, crash_dir), timeout=600)
    [reference], [crashed] = runs_of(reference_dir), runs_of(crash_dir)
    assert crashed.info.status == "FINISHED"
    history = [k for k in reference.data.metrics if k.startswith(("fsp_init/", "student/"))]
    assert "fsp_init/fsp" in history and "student/test_acc" in history
    assert {k: crashed.data.metrics[k] for k in history} == {k: reference.data.metrics[k] for k in history}
