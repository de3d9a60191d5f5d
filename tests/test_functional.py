import math

import pytest
import torch
import torch.nn.functional as F

from kdexp.distill.functional import hinton, kd_kl


def test_kd_kl_matches_hand_computation_with_t_squared_scaling():
    s = torch.tensor([[1.0, 2.0, 0.0]])
    t = torch.tensor([[0.5, 0.0, 3.0]])
    T = 2.0
    p = [math.exp(v / T) for v in t[0].tolist()]
    p = [v / sum(p) for v in p]
    q = [math.exp(v / T) for v in s[0].tolist()]
    q = [v / sum(q) for v in q]
    hand = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q)) * T * T
    assert kd_kl(s, t, T).item() == pytest.approx(hand, rel=1e-6)


def test_kd_kl_is_batch_mean():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    per_row = torch.stack([kd_kl(s[i:i + 1], t[i:i + 1], 3.0) for i in range(4)])
    assert kd_kl(s, t, 3.0).item() == pytest.approx(per_row.mean().item(), rel=1e-5)


def test_kd_kl_zero_when_student_equals_teacher():
    # Zero up to rounding: softmax and log_softmax round separately, and T² = 16 scales that.
    for seed in range(20):
        z = torch.randn(3, 10, generator=torch.Generator().manual_seed(seed)) * 5
        assert kd_kl(z, z, 4.0).item() == pytest.approx(0.0, abs=16 * 1e-6)
        assert kd_kl(z.double(), z.double(), 4.0).item() == pytest.approx(0.0, abs=16 * 1e-14)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_hinton_weights_ce_by_alpha_and_kd_by_one_minus_alpha(alpha):
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    terms = hinton(s, t, y, 3.0, alpha)
    ce, kd = F.cross_entropy(s, y), kd_kl(s, t, 3.0)
    assert terms["ce"].item() == pytest.approx(ce.item())
    assert terms["kd"].item() == pytest.approx(kd.item())
    assert terms["loss"].item() == pytest.approx((alpha * ce + (1 - alpha) * kd).item(), rel=1e-6)
    if alpha == 1.0:
        assert terms["loss"].item() == pytest.approx(ce.item())
    if alpha == 0.0:
        assert terms["loss"].item() == pytest.approx(kd.item())


@pytest.mark.parametrize("alpha, T", [(0.5, 3.0), (0.1, 4.0), (1.0, 2.0)])
def test_hinton_gradient_on_the_student_is_the_textbook_one(alpha, T):
    """d/dz_s of `alpha·CE + (1-alpha)·T²·KL` is `alpha·(p_s - y)/B + (1-alpha)·T·(p_s^T - p_t^T)/B`:
    the T² factor is what keeps the soft term's gradient at the scale of the hard one."""
    s = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 10, dtype=torch.float64)
    y = torch.randint(0, 10, (4,))
    hinton(s, t, y, T, alpha)["loss"].backward()
    hard = F.softmax(s.detach(), dim=1) - F.one_hot(y, 10)
    soft = F.softmax(s.detach() / T, dim=1) - F.softmax(t / T, dim=1)
    expected = (alpha * hard + (1 - alpha) * T * soft) / 4
    assert torch.allclose(s.grad, expected, atol=1e-12)
