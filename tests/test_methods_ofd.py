"""hint=ofd (kdexp/distill/methods/ofd.py) against mdistiller's OFD written again: the partial L2
distance, the margin from the teacher's batch norm, the stage weights, the recipe's layers."""

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import compose_cfg
from kdexp.config.checks import ConfigError
from kdexp.distill.methods import Outputs
from kdexp.distill.methods.ofd import OFD, OFDConfig, margin, partial_l2
from kdexp.distill.phase import Clock
from kdexp.models.factory import build

RESNET = {"name": "resnet", "depth": 8, "widths": [8, 8, 16, 32], "dropout": 0.0}


def _reference_feat_loss(source, target, margin_):
    """mdistiller distillers/OFD.py feat_loss, as written there."""
    loss = ((source - margin_) ** 2 * ((source > margin_) & (target <= margin_)).float()
            + (source - target) ** 2 * ((source > target) & (target > margin_) & (target <= 0)).float()
            + (source - target) ** 2 * (target > 0).float())
    return torch.abs(loss).mean(dim=0).sum()


def _reference_margin(std, mean):
    """mdistiller's margin loop, with Φ written through math.erf instead of scipy."""
    out = []
    for s, m in zip(std.tolist(), mean.tolist()):
        s = abs(s)
        cdf = 0.5 * (1 + math.erf((-m / s) / math.sqrt(2)))
        out.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / cdf + m if cdf > 0.001 else -3 * s)
    return torch.tensor(out)


def test_partial_l2_matches_the_reference_and_is_plain_l2_where_the_teacher_is_positive():
    s, t, m = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5), -torch.rand(4)
    assert partial_l2(s, t, m).item() == pytest.approx(_reference_feat_loss(s, t, m.view(1, 4, 1, 1)).item(), rel=1e-6)
    positive = t.abs() + 0.1
    assert partial_l2(s, positive, m).item() == pytest.approx(((s - positive) ** 2).mean(0).sum().item(), rel=1e-6)
    below = torch.full((1, 4, 1, 1), -5.0)  # teacher far below the margin, student below it too: nothing to learn
    assert partial_l2(torch.full((1, 4, 1, 1), -6.0), below, m).item() == 0.0


def test_the_margin_is_the_negative_tail_mean_of_the_bn_response():
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 1.0]))
        bn.bias.copy_(torch.tensor([0.0, 0.5, 5.0]))
    got = margin(bn)
    torch.testing.assert_close(got, _reference_margin(bn.weight, bn.bias))
    assert got[0].item() == pytest.approx(-2 / math.sqrt(2 * math.pi), rel=1e-6)  # half-normal: −σ·√(2/π)
    assert got[2].item() == -3.0  # Φ(−5) < 0.001


def test_the_recipe_layers_margins_stage_weights_and_gradients():
    assert OFDConfig().weight == 0.001
    student, teacher = build(OmegaConf.create(RESNET), (3, 16, 16), 10, 0), build(OmegaConf.create(RESNET), (3, 16, 16), 10, 1)
    m = OFD(OmegaConf.structured(OFDConfig()), None)
    m.resolve(student, teacher)
    assert m.teacher_layers() == ["stages.0.0.relu:input", "stages.1.0.relu:input", "stages.2.0.relu:input"]
    assert m.student_layers() == m.teacher_layers()
    torch.testing.assert_close(m._margins[2], margin(teacher.stages[2][0].bn2))  # bn2: the BN before that ReLU
    fs = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    ft = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    fs = [f.requires_grad_() for f in fs]
    s, t = Outputs(None, dict(zip(m.student_layers(), fs))), Outputs(None, dict(zip(m.teacher_layers(), ft)))
    m.setup(s, t)
    hint = m(None, Clock(), s, t)["hint"]
    reference = sum(_reference_feat_loss(conn(f), F.adaptive_avg_pool2d(g, f.shape[-2:]),
                                         mg.view(1, -1, 1, 1)) / 2 ** (2 - i)
                    for i, (conn, f, g, mg) in enumerate(zip(m.connectors, fs, ft, m._margins)))
    assert hint.item() == pytest.approx(reference.item(), rel=1e-5)
    hint.backward()
    assert all(f.grad.abs().sum() > 0 for f in fs)
    assert all(p.grad is not None for p in m.connectors.parameters())


def test_a_teacher_layer_without_a_margin_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"hint.teacher='stages.2' is not allowed; hint=ofd takes the teacher's pre-ReLU"):
        m = OFD(OmegaConf.structured(OFDConfig(student=["stages.2"], teacher=["stages.2"])), None)
        m.resolve(build(OmegaConf.create(RESNET), (3, 16, 16), 10, 0), build(OmegaConf.create(RESNET), (3, 16, 16), 10, 1))
    compose_cfg(["hint=ofd", "model@teacher=resnet8", "model@student=resnet8"])  # the recipe validates
