"""hint=crd (kdexp/distill/methods/crd.py) against RepDistiller's crd/ code written again on small
tensors: the NCE loss, the two-sided scores against the memory banks, the bank update; the negatives;
the recipe's settings and CRD+KD's weights; the bank resumed exactly after kill -9."""

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import FAST, compose_cfg
from helpers import finish, reference_and_killed, runs_of, start_kdexp, student_checkpoint
from kdexp.config.checks import ConfigError
from kdexp.distill.compose import ComposedLoss
from kdexp.distill.methods import Outputs
from kdexp.distill.methods.base import TrainingSet
from kdexp.distill.methods.crd import CRD, CRDConfig, nce_loss, other_class_samples
from kdexp.distill.phase import Clock

N, B, K, D_S, D_T = 12, 4, 5, 6, 7
LABELS = torch.arange(N) % 3


def _reference_contrast_loss(x, n_data):
    """RepDistiller crd/criterion.py ContrastLoss, as written there."""
    eps, bsz, m = 1e-7, x.shape[0], x.size(1) - 1
    pn = 1 / float(n_data)
    p_pos = x.select(1, 0)
    log_d1 = torch.div(p_pos, p_pos.add(m * pn + eps)).log_()
    p_neg = x.narrow(1, 1, m)
    log_d0 = torch.div(p_neg.clone().fill_(m * pn), p_neg.add(m * pn + eps)).log_()
    return -(log_d1.sum(0) + log_d0.view(-1, 1).sum(0)) / bsz


def _crd(**overrides):
    cfg = OmegaConf.merge(OmegaConf.structured(CRDConfig(student="s", teacher="t", negatives=K)), overrides)
    m = CRD(cfg, None)
    m.train_set = TrainingSet(N, lambda: LABELS)
    torch.manual_seed(0)
    m.setup(Outputs(torch.zeros(2, 3), {"s": torch.zeros(2, D_S)}), Outputs(torch.zeros(2, 3), {"t": torch.zeros(2, D_T)}))
    return m


def test_nce_matches_the_reference_and_its_hand_derived_value():
    x = torch.rand(3, 6) + 0.1
    assert nce_loss(x, 50).item() == pytest.approx(_reference_contrast_loss(x, 50).item(), rel=1e-6)
    # One sample, one negative, scores equal to the noise K/N = 1/2: each ratio is 1/2.
    assert nce_loss(torch.tensor([[0.5, 0.5]]), 2).item() == pytest.approx(2 * math.log(2), rel=1e-5)


def test_one_step_matches_the_reference_memory_scores_and_update():
    m = _crd()
    mem_s, mem_t = m.memory_s.clone(), m.memory_t.clone()
    f_s, f_t = torch.randn(B, D_S, requires_grad=True), torch.randn(B, D_T)
    idx, y = torch.tensor([0, 4, 5, 9]), LABELS[[0, 4, 5, 9]]
    contrast = torch.cat([idx[:, None], torch.randint(0, N, (B, K))], 1)
    m.contrast_indices = lambda i, labels, *draw: contrast
    hint = m((None, y, idx), Clock(), Outputs(None, {"s": f_s}), Outputs(None, {"t": f_t}))["hint"]

    # RepDistiller: Embed (linear + x / ||x||), ContrastMemory.forward, CRDLoss.forward.
    v1 = m.embed_s(f_s) / m.embed_s(f_s).norm(dim=1, keepdim=True)
    v2 = m.embed_t(f_t) / m.embed_t(f_t).norm(dim=1, keepdim=True)
    out_v2 = torch.exp(torch.bmm(mem_s[contrast.view(-1)].view(B, K + 1, -1), v2.view(B, -1, 1)) / 0.07)
    out_v1 = torch.exp(torch.bmm(mem_t[contrast.view(-1)].view(B, K + 1, -1), v1.view(B, -1, 1)) / 0.07)
    z_v1, z_v2 = out_v1.mean().item() * N, out_v2.mean().item() * N
    reference = _reference_contrast_loss((out_v1 / z_v1).squeeze(2), N) + _reference_contrast_loss((out_v2 / z_v2).squeeze(2), N)
    assert hint.item() == pytest.approx(reference.item(), rel=1e-5)
    assert m.normalisers.tolist() == pytest.approx([z_v1, z_v2], rel=1e-5)
    moved = mem_s[idx] * 0.5 + v1.detach() * 0.5
    torch.testing.assert_close(m.memory_s[idx], moved / moved.norm(dim=1, keepdim=True))
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[idx] = False
    torch.testing.assert_close(m.memory_t[untouched], mem_t[untouched])

    hint.backward()
    assert f_s.grad.abs().sum() > 0  # the student
    assert all(p.grad.abs().sum() > 0 for p in (*m.embed_s.parameters(), *m.embed_t.parameters()))  # both heads
    assert {"memory_s", "memory_t", "normalisers"} <= set(m.state_dict())  # checkpointed with the phase

    second = m((None, y, idx), Clock(), Outputs(None, {"s": f_s.detach()}), Outputs(None, {"t": f_t}))
    assert m.normalisers.tolist() == pytest.approx([z_v1, z_v2], rel=1e-5) and second["hint"].isfinite()  # Z is set once


def test_negatives_come_from_the_other_classes_without_replacement_and_follow_the_seed():
    y = torch.tensor([0, 1, 2])
    torch.manual_seed(3)
    drawn = other_class_samples(LABELS, y, 8)  # 8 of the 8 samples of the other classes
    assert drawn.shape == (3, 8)
    for row, label in zip(drawn, y):
        assert (LABELS[row] != label).all() and len(set(row.tolist())) == 8
    torch.manual_seed(3)
    assert torch.equal(other_class_samples(LABELS, y, 8), drawn)
    many = other_class_samples(LABELS, y, 20)  # more than there are: with replacement
    assert (LABELS[many] != y[:, None]).all()


def test_the_recipe_and_crd_plus_kd_weights():
    assert (CRDConfig().weight, CRDConfig().feat_dim, CRDConfig().negatives, CRDConfig().temperature,
            CRDConfig().momentum) == (0.8, 128, 16384, 0.07, 0.5)
    # CRD+KD, RepDistiller -r 1 -a 1 -b 0.8: CE + KD + 0.8 CRD = 2 × (kdexp's hinton at alpha 0.5 + 0.4 CRD).
    cfg = compose_cfg(["hint=crd", "hint.negatives=4", "loss.alpha=0.5", "hint.weight=0.4"])
    from kdexp.models.factory import build
    student, teacher = build(cfg.student, (1, 28, 28), 10, 1), build(cfg.teacher, (1, 28, 28), 10, 2).eval()
    x, y, idx = torch.randn(6, 1, 28, 28), torch.arange(6) % 3, torch.arange(6)
    train_set = TrainingSet(6, lambda: y)
    with ComposedLoss(cfg, student, teacher, None, (x[:2], idx[:2]), 0, torch.device("cpu"), Clock(), train_set) as c:
        assert c.hint.student_layers() == ["head:input"] and c.hint.teacher_layers()[0].endswith(":input")
        torch.manual_seed(0)
        terms = c.step_loss(x, y, idx)
    kd = 16 * F.kl_div(F.log_softmax(student(x) / 4, 1), F.softmax(teacher(x) / 4, 1), reduction="batchmean")
    reference = F.cross_entropy(student(x), y) + kd + 0.8 * terms["hint"]
    assert (2 * terms["loss"]).item() == pytest.approx(reference.item(), rel=1e-5)


@pytest.mark.parametrize("override, needle", [
    ("hint.momentum=1.0", "hint.momentum=1.0 is not allowed; allowed: 0 <= momentum < 1"),
    ("hint.negatives=0", "hint.negatives=0 is not allowed; allowed: an integer >= 1"),
    ("hint.weight=-1", "hint.weight"),
    ("hint.temperature=0", "hint.temperature"),
])
def test_bad_settings_are_refused_in_one_line(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")) as err:
        compose_cfg(["hint=crd", override])
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_runs_end_to_end_and_resumes_its_memory_bank_exactly_after_kill_9(tmp_path):
    args = [*FAST, "hint=crd", "hint.negatives=64", "loss.alpha=1", "data.limit_train=256",
            "trainer.epochs=2", "trainer.baseline=false", "tracking.log_model=false"]
    reference_dir, crash_dir = reference_and_killed(args, tmp_path, timeout=600)
    saved = torch.load(student_checkpoint(crash_dir), weights_only=True)
    assert saved["epoch"] < 2 and {"memory_s", "memory_t", "normalisers"} <= set(saved["parts"]["hint"])
    assert (saved["parts"]["hint"]["normalisers"] > 0).all()
    assert "resuming MLflow run" in finish(start_kdexp(args, crash_dir), timeout=600)
    [reference], [crashed] = runs_of(reference_dir), runs_of(crash_dir)
    assert reference.info.status == crashed.info.status == "FINISHED"
    assert math.isfinite(reference.data.metrics["student_acc"])
    history = [k for k in reference.data.metrics if k.startswith("student/")]
    assert "student/hint" in history
    assert {k: crashed.data.metrics[k] for k in history} == {k: reference.data.metrics[k] for k in history}
