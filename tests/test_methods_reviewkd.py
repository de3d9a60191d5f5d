"""hint=reviewkd (kdexp/distill/methods/reviewkd.py) against mdistiller's ReviewKD written again: the
hierarchical context loss, the deep-to-shallow fusion on the method's own ABF modules, the warmup,
the recipe's levels and weights, the gradients."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import compose_cfg
from kdexp.config.checks import ConfigError
from kdexp.distill.methods import Outputs
from kdexp.distill.methods.reviewkd import ReviewKD, ReviewKDConfig, hcl_loss
from kdexp.distill.phase import Clock
from kdexp.models.factory import build


def _reference_hcl(fstudent, fteacher):
    """mdistiller distillers/ReviewKD.py hcl_loss, as written there."""
    loss_all = 0.0
    for fs, ft in zip(fstudent, fteacher):
        n, c, h, w = fs.shape
        loss = F.mse_loss(fs, ft, reduction="mean")
        cnt, tot = 1.0, 1.0
        for l in [4, 2, 1]:
            if l >= h:
                continue
            tmpfs, tmpft = F.adaptive_avg_pool2d(fs, (l, l)), F.adaptive_avg_pool2d(ft, (l, l))
            cnt /= 2.0
            loss += F.mse_loss(tmpfs, tmpft, reduction="mean") * cnt
            tot += cnt
        loss_all = loss_all + loss / tot
    return loss_all


def _reference_abf(abf, x, y=None, shape=None, out_shape=None):
    """mdistiller's ABF.forward on the method's module (its weights), as written there."""
    n, _, h, w = x.shape
    x = abf.conv1(x)
    if abf.att_conv is not None:
        y = F.interpolate(y, (shape, shape), mode="nearest")
        z = abf.att_conv(torch.cat([x, y], dim=1))
        x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
    if x.shape[-1] != out_shape:
        x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
    return abf.conv2(x), x


def test_hcl_matches_the_reference_its_hand_derived_weights_and_vanishes_on_equal_maps():
    f_s, f_t = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    assert hcl_loss(f_s, f_t).item() == pytest.approx(_reference_hcl([f_s], [f_t]).item(), rel=1e-6)
    a, b = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)  # 2 x 2: only the 1 x 1 level, weight 1/2
    by_hand = (F.mse_loss(a, b) + 0.5 * F.mse_loss(a.mean((2, 3)), b.mean((2, 3)))) / 1.5
    assert hcl_loss(a, b).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert hcl_loss(a, a).item() == 0.0


def test_the_fusion_matches_the_reference_and_gradients_reach_student_and_abfs():
    names_s, names_t = ["s1", "s2", "s3", "p"], ["t1", "t2", "t3", "q"]
    cfg = OmegaConf.structured(ReviewKDConfig(student=names_s, teacher=names_t, warmup=20))
    m = ReviewKD(cfg, None)
    fs = [torch.randn(2, 4, 16, 16), torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4), torch.randn(2, 16)]
    ft = [torch.randn(2, 6, 16, 16), torch.randn(2, 12, 8, 8), torch.randn(2, 24, 4, 4), torch.randn(2, 24)]
    fs = [f.requires_grad_() for f in fs]
    s, t = Outputs(None, dict(zip(names_s, fs))), Outputs(None, dict(zip(names_t, ft)))
    torch.manual_seed(0)
    m.setup(s, t)
    assert [abf.att_conv is not None for abf in m.abfs] == [True, True, True, False]
    assert m.abfs[0].conv1[0].out_channels == 16  # min(512, channels of the deepest student level)
    hint = m(None, Clock(epoch=5), s, t)["hint"]

    # mdistiller's forward_train: x reversed, abfs reversed, SHAPES / OUT_SHAPES the levels' sizes.
    x = [fs[0], fs[1], fs[2], fs[3][:, :, None, None]][::-1]
    abfs, shapes, out_shapes = list(m.abfs)[::-1], [1, 4, 8, 16], [1, 4, 8, 16]
    out, res = _reference_abf(abfs[0], x[0], out_shape=out_shapes[0])
    results = [out]
    for feat, abf, shape, out_shape in zip(x[1:], abfs[1:], shapes[1:], out_shapes[1:]):
        out, res = _reference_abf(abf, feat, res, shape, out_shape)
        results.insert(0, out)
    teacher = [ft[0], ft[1], ft[2], ft[3][:, :, None, None]]
    reference = min(5 / 20, 1.0) * _reference_hcl(results, teacher)
    assert hint.item() == pytest.approx(reference.item(), rel=1e-5)

    hint.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in fs)
    assert all(p.grad is not None for p in m.abfs.parameters())
    assert m(None, Clock(epoch=40), s, t)["hint"].item() == pytest.approx(4 * hint.item(), rel=1e-5)  # warm


def test_the_recipe_levels_on_cifar_resnets_and_the_weights():
    assert (ReviewKDConfig().weight, ReviewKDConfig().warmup) == (5.0, None)  # null: the recipe's 20 of 240 epochs
    assert compose_cfg(["hint=reviewkd", "trainer.epochs=240"], fast=False).hint.warmup == 20
    spec = {"name": "resnet", "depth": 14, "widths": [8, 8, 16, 32], "dropout": 0.0}
    student, teacher = build(OmegaConf.create(spec), (3, 32, 32), 10, 0), build(OmegaConf.create(spec), (3, 32, 32), 10, 1)
    m = ReviewKD(OmegaConf.structured(ReviewKDConfig()), None)
    m.resolve(student, teacher)
    assert m.student_layers() == ["stages.0", "stages.1", "stages.2", "head.2:input"]
    assert m.teacher_layers() == ["stages.0.1.relu:input", "stages.1.1.relu:input", "stages.2.1.relu:input",
                                  "head.2:input"]


def test_a_negative_warmup_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"hint\.warmup=-1 is not allowed; allowed: an integer in \[0, trainer\.epochs=1\]"):
        compose_cfg(["hint=reviewkd", "hint.warmup=-1"])
