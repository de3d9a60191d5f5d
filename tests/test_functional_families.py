"""The loss terms of the self, multi_teacher and online families against hand computations on tiny
tensors, and gradient flow only where it belongs."""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import kl
from kdexp.distill.functional import (aggregate_teachers, ensemble_probs, feature_l2, kd_kl, multi_teacher, mutual,
                          self_distill, teacher_weights)


def softmax(values, T=1.0):
    e = [math.exp(v / T) for v in values]
    return [v / sum(e) for v in e]


def ce(logits, label):
    return -math.log(softmax(logits)[label])


# Two teachers, one sample, three classes.
T1 = [2.0, 0.0, -1.0]
T2 = [0.0, 1.0, 0.5]
S = [0.5, 0.2, -0.3]
Y = 1
TEMP = 2.0


def teachers():
    return torch.tensor([[T1], [T2]])  # (K=2, B=1, C=3)


# --- aggregation of teachers ---------------------------------------------------------


def test_mean_aggregate_averages_the_softened_teacher_distributions():
    hand = [(a + b) / 2 for a, b in zip(softmax(T1, TEMP), softmax(T2, TEMP))]
    got = aggregate_teachers(teachers(), TEMP, "mean")
    assert got[0].tolist() == pytest.approx(hand, rel=1e-6)
    assert got.sum().item() == pytest.approx(1.0)


def test_weighted_aggregate_normalises_the_fixed_weights():
    hand = [0.75 * a + 0.25 * b for a, b in zip(softmax(T1, TEMP), softmax(T2, TEMP))]
    got = aggregate_teachers([torch.tensor([T1]), torch.tensor([T2])], TEMP, "weighted", [3.0, 1.0])
    assert got[0].tolist() == pytest.approx(hand, rel=1e-6)


def test_confidence_weights_are_each_teachers_true_label_probability_normalised():
    p1, p2 = softmax(T1)[Y], softmax(T2)[Y]  # at T = 1
    w1, w2 = p1 / (p1 + p2), p2 / (p1 + p2)
    w = teacher_weights(teachers(), "confidence", labels=torch.tensor([Y]))
    assert w[0].tolist() == pytest.approx([w1, w2], rel=1e-6)
    hand = [w1 * a + w2 * b for a, b in zip(softmax(T1, TEMP), softmax(T2, TEMP))]
    got = aggregate_teachers(teachers(), TEMP, "confidence", labels=torch.tensor([Y]))
    assert got[0].tolist() == pytest.approx(hand, rel=1e-6)


def test_confidence_weights_are_per_sample():
    z = torch.tensor([[[5.0, 0.0], [0.0, 5.0]], [[0.0, 5.0], [5.0, 0.0]]])  # (K=2, B=2, C=2)
    w = teacher_weights(z, "confidence", labels=torch.tensor([0, 0]))
    # sample 0: teacher 0 is right and confident; sample 1: teacher 1 is.
    assert w[0, 0] > 0.99 and w[1, 1] > 0.99
    assert w.sum(dim=1).tolist() == pytest.approx([1.0, 1.0])


def test_multi_teacher_loss_matches_hand_computation():
    alpha = 0.3
    q = [(a + b) / 2 for a, b in zip(softmax(T1, TEMP), softmax(T2, TEMP))]
    kd = kl(q, softmax(S, TEMP)) * TEMP**2
    terms = multi_teacher(torch.tensor([S]), teachers(), torch.tensor([Y]), TEMP, alpha, "mean")
    assert terms["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce(S, Y), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(alpha * ce(S, Y) + (1 - alpha) * kd, rel=1e-5)


def test_one_teacher_reduces_to_standard_kd():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    got = multi_teacher(s, [t], torch.randint(0, 4, (5,)), 3.0, 0.0, "mean")["kd"]
    assert got.item() == pytest.approx(kd_kl(s, t, 3.0).item(), rel=1e-5)


def test_teachers_receive_no_gradient_through_multi_teacher():
    s = torch.randn(4, 5, requires_grad=True)
    ts = [torch.randn(4, 5, requires_grad=True) for _ in range(3)]
    y = torch.randint(0, 5, (4,))
    for aggregate, weights in (("mean", None), ("weighted", [1, 2, 3]), ("confidence", None)):
        multi_teacher(s, ts, y, 3.0, 0.5, aggregate, weights)["loss"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert all(t.grad is None for t in ts)


def test_ensemble_probs_is_the_mean_of_probabilities():
    got = ensemble_probs([torch.tensor([T1]), torch.tensor([T2])])
    assert got[0].tolist() == pytest.approx([(a + b) / 2 for a, b in zip(softmax(T1), softmax(T2))], rel=1e-6)
    got = ensemble_probs([torch.tensor([T1]), torch.tensor([T2])], [1.0, 3.0])
    assert got[0].tolist() == pytest.approx([(a + 3 * b) / 4 for a, b in zip(softmax(T1), softmax(T2))], rel=1e-6)


# --- online (mutual) -----------------------------------------------------------------


def test_dml_each_peer_distils_from_the_mean_kl_to_the_others():
    peers = [T1, T2, S]
    alpha = 0.4
    terms = mutual([torch.tensor([p]) for p in peers], torch.tensor([Y]), TEMP, alpha, "dml")
    total = 0.0
    for k, zk in enumerate(peers):
        kds = [kl(softmax(zj, TEMP), softmax(zk, TEMP)) * TEMP**2 for j, zj in enumerate(peers) if j != k]
        kd = sum(kds) / len(kds)
        assert terms[f"peer{k}_kd"].item() == pytest.approx(kd, rel=1e-5)
        assert terms[f"peer{k}_ce"].item() == pytest.approx(ce(zk, Y), rel=1e-6)
        loss = alpha * ce(zk, Y) + (1 - alpha) * kd
        assert terms[f"peer{k}_loss"].item() == pytest.approx(loss, rel=1e-5)
        total += loss
    assert terms["loss"].item() == pytest.approx(total, rel=1e-5)


def test_ensemble_mode_distils_each_peer_from_the_mean_logits():
    peers = [T1, T2]
    mean = [(a + b) / 2 for a, b in zip(T1, T2)]
    terms = mutual([torch.tensor([p]) for p in peers], torch.tensor([Y]), TEMP, 0.0, "ensemble")
    for k, zk in enumerate(peers):
        kd = kl(softmax(mean, TEMP), softmax(zk, TEMP)) * TEMP**2
        assert terms[f"peer{k}_kd"].item() == pytest.approx(kd, rel=1e-5)
        assert terms[f"peer{k}_loss"].item() == pytest.approx(kd, rel=1e-5)


@pytest.mark.parametrize("mode", ["dml", "ensemble"])
def test_each_peer_gets_gradient_only_from_its_own_loss(mode):
    zs = [torch.randn(6, 5, requires_grad=True) for _ in range(3)]
    y = torch.randint(0, 5, (6,))
    terms = mutual(zs, y, 3.0, 0.5, mode)
    total_grads = torch.autograd.grad(terms["loss"], zs, retain_graph=True)
    for k, z in enumerate(zs):
        own = torch.autograd.grad(terms[f"peer{k}_loss"], z, retain_graph=True)[0]
        assert torch.allclose(total_grads[k], own, atol=1e-7)
        # another peer's loss does not reach z_k: the targets are detached
        other = terms[f"peer{(k + 1) % 3}_loss"]
        assert torch.autograd.grad(other, z, retain_graph=True, allow_unused=True)[0] is None


def test_mutual_refuses_a_single_peer_and_unknown_modes():
    with pytest.raises(ValueError, match="two peers"):
        mutual([torch.randn(2, 3)], torch.tensor([0, 1]), 2.0, 0.5)
    with pytest.raises(ValueError, match="unknown mode"):
        mutual([torch.randn(2, 3)] * 2, torch.tensor([0, 1]), 2.0, 0.5, "nope")


# --- self-distillation ----------------------------------------------------------------


def test_self_distill_deepest_on_labels_shallow_on_labels_deepest_and_features():
    shallow, deep = [0.1, 0.4, -0.2], T1
    h_shallow, h_deep = [1.0, -2.0], [0.5, 0.0]
    alpha, fw = 0.25, 0.7
    terms = self_distill([torch.tensor([shallow]), torch.tensor([deep])], torch.tensor([Y]), TEMP, alpha,
                         [torch.tensor([h_shallow]), torch.tensor([h_deep])], fw)
    kd = kl(softmax(deep, TEMP), softmax(shallow, TEMP)) * TEMP**2
    feat = sum((a - b) ** 2 for a, b in zip(h_shallow, h_deep)) / len(h_deep)
    assert terms["exit2_ce"].item() == pytest.approx(ce(deep, Y), rel=1e-6)
    assert "exit2_kd" not in terms
    assert terms["exit1_kd"].item() == pytest.approx(kd, rel=1e-5)
    assert terms["exit1_feat"].item() == pytest.approx(feat, rel=1e-6)
    hand = ce(deep, Y) + alpha * ce(shallow, Y) + (1 - alpha) * kd + fw * feat
    assert terms["loss"].item() == pytest.approx(hand, rel=1e-5)


def test_self_distill_with_alpha_one_is_the_sum_of_cross_entropies():
    zs = [torch.randn(4, 6) for _ in range(3)]
    y = torch.randint(0, 6, (4,))
    terms = self_distill(zs, y, 3.0, 1.0)
    assert terms["loss"].item() == pytest.approx(sum(F.cross_entropy(z, y) for z in zs).item(), rel=1e-6)
    assert "exit1_feat" not in terms


def test_self_distill_teaches_no_gradient_into_the_deepest_exit():
    zs = [torch.randn(4, 6, requires_grad=True) for _ in range(3)]
    hs = [torch.randn(4, 8, requires_grad=True) for _ in range(3)]
    y = torch.randint(0, 6, (4,))
    self_distill(zs, y, 3.0, 0.2, hs, 0.5)["loss"].backward()
    deep_ce_grad = torch.autograd.grad(F.cross_entropy(zs[-1], y), zs[-1])[0]
    assert torch.allclose(zs[-1].grad, deep_ce_grad, atol=1e-7)  # the KD terms do not reach it
    assert hs[-1].grad is None  # the deepest features are only a target
    assert all(h.grad is not None for h in hs[:-1]) and all(z.grad is not None for z in zs[:-1])


def test_feature_l2_is_mean_squared_difference_and_detaches_the_target():
    h = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    loss = feature_l2(h, t)
    assert loss.item() == pytest.approx((1 + 4 + 1 + 1) / 4)
    loss.backward()
    assert h.grad is not None and t.grad is None
