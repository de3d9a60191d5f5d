"""hint=at's recipe (RepDistiller's `distill == 'attention'`): the sum over the three residual stages,
weight 1000 on the sum, against an independent re-computation from the models' stage outputs."""

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg
from kdexp.config.checks import ConfigError
from kdexp.distill.compose import ComposedLoss
from kdexp.distill.methods.at import ATConfig, AttentionTransfer
from kdexp.distill.phase import Clock
from kdexp.models.factory import build

SHAPE = (3, 16, 16)


def _reference_at(f_s, f_t):
    """RepDistiller distiller_zoo/AT.py for p = 2, written again: pool the larger map, then the mean
    squared difference of the L2-normalised channel means of squares."""
    if f_s.shape[2] > f_t.shape[2]:
        f_s = torch.nn.functional.adaptive_avg_pool2d(f_s, f_t.shape[2:])
    elif f_s.shape[2] < f_t.shape[2]:
        f_t = torch.nn.functional.adaptive_avg_pool2d(f_t, f_s.shape[2:])
    a_s, a_t = f_s.pow(2).mean(1).reshape(len(f_s), -1), f_t.pow(2).mean(1).reshape(len(f_t), -1)
    a_s, a_t = a_s / a_s.norm(dim=1, keepdim=True), a_t / a_t.norm(dim=1, keepdim=True)
    return (a_s - a_t).pow(2).mean()


def _resnet(widths, seed):
    return build(OmegaConf.create({"name": "resnet", "depth": 8, "widths": widths, "dropout": 0.0}), SHAPE, 10, seed)


def test_the_recipe_is_beta_1000_on_the_sum_over_stages_one_to_three():
    from kdexp.distill.methods.maps import EVERY_STAGE

    # Every stage (RepDistiller's feat[1:-1]): the three of a CIFAR ResNet, four on VGG (tests/test_methods_pairing.py).
    assert ATConfig().weight == 1000.0 and AttentionTransfer.default_stages == EVERY_STAGE
    assert not AttentionTransfer.single
    cfg = compose_cfg(["hint=at", "model@teacher=resnet8", "model@student=resnet8"])
    student, teacher = _resnet([8, 8, 16, 32], 1), _resnet([16, 16, 32, 64], 2).eval()
    x, y, idx = torch.randn(4, *SHAPE), torch.randint(0, 10, (4,)), torch.arange(4)
    with ComposedLoss(cfg, student, teacher, None, (x[:2], idx[:2]), 0, torch.device("cpu"), Clock()) as composed:
        assert composed.hint.student_layers() == composed.hint.teacher_layers() == ["stages.0", "stages.1", "stages.2"]
        terms = composed.step_loss(x, y, idx)
    plain = compose_cfg(["model@teacher=resnet8", "model@student=resnet8"])
    frozen = lambda: lambda x, idx: teacher(x)  # noqa: E731
    with ComposedLoss(plain, student, teacher, frozen, (x[:2], idx[:2]), 0, torch.device("cpu"), Clock()) as kd_only:
        family_loss = kd_only.step_loss(x, y, idx)["loss"]
    feats_s, feats_t = student.features(x), teacher.features(x)  # train mode, as in the step: batch statistics
    reference = sum(_reference_at(s, t) for s, t in zip(feats_s, feats_t))
    assert terms["hint"].item() == pytest.approx(reference.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx(family_loss.item() + 1000 * reference.item(), rel=1e-5)
    terms["hint"].backward()
    first_conv = student.stages[0][0].conv1.weight  # only stage 1's own term reaches it through stage 1
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_each_stage_counts_once_and_equal_maps_give_zero():
    f = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    g = [torch.randn(2, 6, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    m = AttentionTransfer(OmegaConf.structured(ATConfig(student=["a", "b", "c"], teacher=["d", "e", "f"])), None)
    from kdexp.distill.methods import Outputs
    s, t = Outputs(torch.zeros(2, 10), dict(zip("abc", f))), Outputs(torch.zeros(2, 10), dict(zip("def", g)))
    total = m(None, Clock(), s, t)["hint"]
    assert total.item() == pytest.approx(sum(_reference_at(a, b).item() for a, b in zip(f, g)), rel=1e-5)
    same = Outputs(torch.zeros(2, 10), dict(zip("def", [2 * v for v in f])))  # a(f) is scale-free per sample
    assert m(None, Clock(), s, same)["hint"].item() == pytest.approx(0.0, abs=1e-10)


def test_a_list_of_unequal_length_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="hint.student names 2 layers and hint.teacher 1"):
        compose_cfg(["hint=at", "model@teacher=resnet8", "model@student=resnet8",
                     "hint.student=[stages.0,stages.1]", "hint.teacher=[stages.1]"])
