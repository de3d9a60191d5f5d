"""The distillation methods (kdexp/distill/methods/) against independent re-computations of their papers'
formulas on fixed tensors, and where gradients go."""


import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from helpers import kl
from kdexp.distill.functional import hinton
from kdexp.config.registry import HINT_METHODS, KD_METHODS
from kdexp.distill.methods import Outputs
from kdexp.distill.methods.at import at_loss, attention
from kdexp.distill.methods.ctkd import curriculum
from kdexp.distill.methods.dist import dist_parts
from kdexp.distill.methods.dkd import dkd_parts
from kdexp.distill.methods.fitnets import connector
from kdexp.distill.methods.ls import standardize
from kdexp.distill.phase import Clock

torch.manual_seed(0)
Z_S, Z_T = torch.randn(8, 10) * 3, torch.randn(8, 10) * 3
Y = torch.randint(0, 10, (8,))
LOSS = OmegaConf.create({"temperature": 4.0, "alpha": 0.1})


def term(registry, name, **overrides):
    cls = registry[name]
    cfg = OmegaConf.merge(OmegaConf.structured(cls.schema), overrides)
    return cls(cfg, LOSS)


def test_registries_hold_every_method():
    assert set(KD_METHODS) == {"hinton", "dkd", "dist", "ls", "ctkd"}
    assert set(HINT_METHODS) >= {"none", "fitnets", "at", "crd"}  # issue 22 adds more, engineer by engineer


def test_hinton_term_is_the_loss_of_before_to_the_last_bit():
    out = term(KD_METHODS, "hinton")((None, Y, None), Clock(), Outputs(Z_S), Outputs(Z_T))
    before = hinton(Z_S, Z_T, Y, 4.0, 0.1)
    assert list(out) == list(before)
    for key in before:
        assert torch.equal(out[key], before[key])


def test_dkd_parts_decompose_hinton_kl_sample_by_sample():
    T = 4.0
    for i in range(len(Y)):
        zs, zt, y = Z_S[i:i + 1].double(), Z_T[i:i + 1].double(), Y[i:i + 1]  # float64: exact enough
        tckd, nckd = dkd_parts(zs, zt, y, T)
        p_s, p_t = F.softmax(zs / T, 1)[0], F.softmax(zt / T, 1)[0]
        # Independent: the binary and the non-target distributions written out by hand.
        b_s = torch.stack([p_s[y[0]], 1 - p_s[y[0]]])
        b_t = torch.stack([p_t[y[0]], 1 - p_t[y[0]]])
        keep = torch.arange(10) != y[0]
        hat_s, hat_t = p_s[keep] / p_s[keep].sum(), p_t[keep] / p_t[keep].sum()
        assert tckd.item() == pytest.approx(T**2 * kl(b_t, b_s).item(), rel=1e-5)
        assert nckd.item() == pytest.approx(T**2 * kl(hat_t, hat_s).item(), rel=1e-5)
        full = T**2 * kl(p_t, p_s).item()
        assert full == pytest.approx(tckd.item() + (1 - p_t[y[0]].item()) * nckd.item(), rel=1e-5)


def test_dkd_warms_up_linearly_then_holds():
    dkd = term(KD_METHODS, "dkd", warmup=4)
    kd = [dkd((None, Y, None), Clock(epoch=e), Outputs(Z_S), Outputs(Z_T))["kd"].item() for e in (1, 2, 4, 9)]
    tckd, nckd = dkd_parts(Z_S, Z_T, Y, 4.0)
    full = (1.0 * tckd + 8.0 * nckd).item()
    assert kd == pytest.approx([full / 4, full / 2, full, full], rel=1e-6)


def pearson(a, b):
    return torch.corrcoef(torch.stack([a, b]))[0, 1]


def test_dist_matches_pearson_relations_and_vanishes_on_identical_logits():
    tau = 2.0
    inter, intra = dist_parts(Z_S, Z_T, tau)
    p_s, p_t = F.softmax(Z_S / tau, 1), F.softmax(Z_T / tau, 1)
    want_inter = 1 - torch.stack([pearson(p_s[i], p_t[i]) for i in range(8)]).mean()
    want_intra = 1 - torch.stack([pearson(p_s[:, c], p_t[:, c]) for c in range(10)]).mean()
    assert inter.item() == pytest.approx(tau**2 * want_inter.item(), rel=1e-4)
    assert intra.item() == pytest.approx(tau**2 * want_intra.item(), rel=1e-4)
    same = dist_parts(Z_T, Z_T, tau)
    assert abs(same[0].item()) < 1e-5 and abs(same[1].item()) < 1e-5


def test_logit_standardisation_ignores_shift_and_scale():
    moved = Z_S * 7.5 - 3.0
    assert torch.allclose(standardize(moved), standardize(Z_S), atol=1e-5)
    z = standardize(Z_S)
    assert torch.allclose(z.mean(1), torch.zeros(8), atol=1e-6)
    assert torch.allclose(z.std(1), torch.ones(8), atol=1e-5)
    ls = term(KD_METHODS, "ls")
    a = ls((None, Y, None), Clock(), Outputs(Z_S), Outputs(Z_T))["kd"]
    b = ls((None, Y, None), Clock(), Outputs(Z_S * 3 + 1), Outputs(Z_T * 0.5 - 2))["kd"]
    assert a.item() == pytest.approx(b.item(), rel=1e-4)


def test_ctkd_temperature_gradient_is_reversed_and_scaled_by_the_curriculum():
    ctkd = term(KD_METHODS, "ctkd", warmup=10)
    clock = Clock(epoch=5)
    lam = curriculum(5, 10, 1.0)
    assert lam == pytest.approx(0.5)
    zs = Z_S.clone().requires_grad_(True)
    out = ctkd((None, Y, None), clock, Outputs(zs), Outputs(Z_T))
    out["loss"].backward()
    # Independent: the same loss with the temperature as a plain differentiable function of theta.
    theta = torch.tensor(1.0, requires_grad=True)
    tau = 1.0 + 20.0 * torch.sigmoid(theta)
    soft = F.kl_div(F.log_softmax(Z_S / tau, 1), F.softmax(Z_T / tau, 1), reduction="batchmean") * tau**2
    (0.1 * F.cross_entropy(Z_S, Y) + 0.9 * soft).backward()
    assert ctkd.theta.grad.item() == pytest.approx(-lam * theta.grad.item(), rel=1e-4)
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert curriculum(1, 10, 1.0) < curriculum(5, 10, 1.0) < curriculum(10, 10, 1.0) == pytest.approx(1.0)


def test_fitnets_is_zero_when_the_connected_features_match():
    fit = term(HINT_METHODS, "fitnets")
    fit.student_names, fit.teacher_names = ["s"], ["t"]
    f = torch.randn(4, 6)
    s, t = Outputs(Z_S[:4], {"s": f}), Outputs(Z_T[:4], {"t": f.clone()})
    fit.setup(s, t)
    with torch.no_grad():
        fit.connector[1].weight.copy_(torch.eye(6))
        fit.connector[1].bias.zero_()
    assert fit((None, None, None), Clock(), s, t)["hint"].item() == 0.0
    assert fit((None, None, None), Clock(), s, Outputs(Z_T[:4], {"t": f + 1}))["hint"].item() == pytest.approx(1.0)


def test_fitnets_connector_bridges_shapes():
    assert connector((8, 4, 4), (16, 8, 8))(torch.randn(2, 8, 4, 4)).shape == (2, 16, 8, 8)
    assert connector((128,), (64, 7, 7))(torch.randn(2, 128)).shape == (2, 64, 7, 7)


def test_at_matches_the_attention_formula_and_is_zero_on_equal_maps():
    f_s, f_t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    a = f_s.pow(2).mean(1).view(2, -1)
    a = a / a.norm(dim=1, keepdim=True)
    assert torch.allclose(attention(f_s), a, atol=1e-6)
    b = f_t.pow(2).mean(1).view(2, -1)
    b = b / b.norm(dim=1, keepdim=True)
    assert at_loss(f_s, f_t).item() == pytest.approx((a - b).pow(2).mean().item(), rel=1e-5)
    assert at_loss(f_s, f_s * 2).item() == pytest.approx(0.0, abs=1e-12)  # scale-free per sample
    assert at_loss(torch.randn(2, 3, 8, 8), f_t).isfinite()  # sizes differ: pooled


def test_the_composed_loss_sends_gradients_only_to_the_student_and_its_parts():
    from kdexp.distill.compose import ComposedLoss
    from kdexp.models.factory import build

    cfg = OmegaConf.create({"seed": 0, "loss": {"temperature": 4.0, "alpha": 0.1},
                            "kd": {"name": "hinton", "standardize": False},
                            "hint": {"name": "fitnets", "weight": 1.0, "student": None, "teacher": None}})
    shape = (1, 28, 28)
    student = build(OmegaConf.create({"name": "mlp", "hidden": [16], "dropout": 0.0}), shape, 10, 1)
    teacher = build(OmegaConf.create({"name": "cnn", "channels": [4, 8], "fc": 16, "dropout": 0.0,
                                      "batch_norm": True}), shape, 10, 2)
    x = torch.randn(6, *shape)
    never = lambda: pytest.fail("fitnets needs the teacher's features: no cached logits")  # noqa: E731
    with ComposedLoss(cfg, student, teacher, never, (x[:2], torch.arange(2)), 3, torch.device("cpu"), Clock()) as d:
        terms = d.step_loss(x, torch.randint(0, 10, (6,)), torch.arange(6))
        terms["loss"].backward()
        assert set(d.parts) == {"hint"}
        assert all(p.grad is not None for p in d.parts["hint"].parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is never trained through it
    assert not student._forward_hooks and all(not m._forward_hooks for m in student.modules())


def test_capture_takes_a_modules_input_by_the_input_suffix():
    from kdexp.distill.features import Capture

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    x = torch.tensor([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]])  # opposite rows: negatives before the ReLU
    with torch.no_grad():
        net[0].bias.zero_()
    with Capture(net, ["1:input", "1"]) as cap:
        out = net(x)
    pre = net[0](x)
    torch.testing.assert_close(cap.features["1:input"], pre)  # before the ReLU: negatives kept
    torch.testing.assert_close(cap.features["1"], out)
    assert (cap.features["1:input"] < 0).any()


def test_layer_lists_pair_in_order_and_default_to_the_recipes_stages():
    from kdexp.distill.methods.hint_layers import LayerPairMethod, pick_stages

    assert pick_stages(["stages.0", "stages.1", "stages.2"], (0, 1, 2)) == ["stages.0", "stages.1", "stages.2"]
    assert pick_stages(["stages.0", "stages.1"], (0, 1, 2)) == ["stages.0", "stages.1"]  # a 2-stage model
    assert pick_stages(["stages.0", "stages.1", "stages.2"], (1,)) == ["stages.1"]

    class Multi(LayerPairMethod):
        name, single, default_stages = "multi", False, (0, 1, 2)

    from kdexp.models.staged import StagedNet

    def staged(n):
        return StagedNet([torch.nn.Identity() for _ in range(n)], torch.nn.Identity())

    m = Multi(OmegaConf.create({"student": None, "teacher": None, "weight": 1.0}), None)
    m.resolve(staged(3), staged(3))
    assert m.student_layers() == m.teacher_layers() == ["stages.0", "stages.1", "stages.2"]
    m = Multi(OmegaConf.create({"student": None, "teacher": None, "weight": 1.0}), None)
    m.resolve(staged(2), staged(3))  # as many pairs as both have: the first ones (the references' zip)
    assert m.student_layers() == ["stages.0", "stages.1"] and m.teacher_layers() == ["stages.0", "stages.1"]
    m = Multi(OmegaConf.create({"student": ["a", "b"], "teacher": ["c", "d"], "weight": 1.0}), None)
    m.resolve(staged(3), staged(3))
    s, t = Outputs(Z_S, {"a": 1, "b": 2}), Outputs(Z_T, {"c": torch.ones(1), "d": torch.zeros(1)})
    assert [p[0] for p in m.pairs(s, t)] == [1, 2]
