"""`hint=kdsvd`: knowledge distillation by singular value decomposition (Lee, Kim & Song,
"Self-supervised Knowledge Distillation Using Singular Value Decomposition", ECCV 2018).

A feature map (C, H, W) read as the matrix X (H·W × C) is compressed to its leading right singular
vectors (over channels) scaled by their normalised singular values; what is distilled is how the
compressed features of *consecutive* layers relate, through a radial basis function. For the
teacher's layer l: (s_t, V_t) = the first k singular values (L2-normalised) and vectors of X_t; the
student's first k + 3 vectors V_s are aligned to the teacher's (each teacher vector takes the
student vector of largest |cosine|, with its sign); both are scaled by s_t: v = V · diag(s_t). With
v^l (C × k) the layer's result,

    R(l)[c, c', j] = exp(−(v^l[c, j] − v^{l−1}[c', j])² / 8)
    hint = (1/N) Σ_{l ≥ 2} Σ (R_s(l) − R_t(l))²     (non-finite entries dropped, as the reference)

The alignment compares vectors over channels, so each student layer needs as many channels as the
teacher layer it is paired with (resnet32x4 → resnet8x4, wrn-40-2 → wrn-16-2, vgg13 → vgg8), and
the method needs two pairs at least. SVD's gradient is undefined where singular values repeat or
vanish: a map with fewer positions than channels has a null space (ResNet-8x4's 8x8 map of 256
channels, a CNN's 7x7 of 64), and on the CNN's its gradient was non-finite for 56 of 64 samples at
the first step (measured; the ResNet's was not). The
reference cleans only the values, so the non-finite gradient reaches the weights and the next SVD
fails on a NaN map; here, besides the values, a sample's gradient through the SVD is dropped
(zero) when it is not finite, and its other terms (CE, KD) still train it.

Recipe (RepDistiller `distiller_zoo/KDSVD.py` with `feat[1:-1]`, mdistiller KDSVD K = 1,
FEAT_WEIGHT 1; neither publishes a CIFAR-100 number for it): CE + 1 · hint over every stage after the
stem, k = 1, batch 64. The matrix is (H·W × C) as in RepDistiller and the authors' TensorFlow code
(mdistiller reshapes to (C·H × W) instead). Defaults here: weight 1, k 1, layers = every stage of
both models; `loss.alpha=1` makes the family loss CE alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from kdexp.config.checks import ConfigError, require
from kdexp.config.registry import HINT_METHODS
from kdexp.distill.methods.hint_layers import LayerPairMethod
from kdexp.distill.methods.maps import EVERY_STAGE, refuse_vector_models, require_maps


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _finite_per_sample(grad: torch.Tensor) -> torch.Tensor:
    """The gradient of each sample whose entries are all finite; zero for the others (on the
    device: no host sync)."""
    finite = torch.isfinite(grad).flatten(1).all(dim=1).view(-1, *[1] * (grad.dim() - 1))
    return torch.where(finite, grad, torch.zeros_like(grad))


def singular(f: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, V): the first `n` singular values (N, n), L2-normalised, and right singular vectors
    (N, C, n) of each sample's map read as an (H·W × C) matrix."""
    x = f.flatten(2).transpose(1, 2).float()
    if x.requires_grad:
        x.register_hook(_finite_per_sample)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    s, v = _finite(s), _finite(vh.transpose(1, 2))
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def align(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each teacher vector (column of v_t), the student vector of largest |cosine|, signed to
    point the teacher's way: (N, C, k)."""
    cosine = v_s.transpose(1, 2) @ v_t
    best = cosine.abs().amax(dim=1, keepdim=True)
    pick = torch.where(cosine.abs() == best, cosine.sign(), torch.zeros_like(cosine))
    return v_s @ pick


def _rbf(v: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    return torch.exp(-(v.unsqueeze(2) - before.unsqueeze(1)).pow(2) / 8)


def kdsvd_loss(pairs: list[tuple[torch.Tensor, torch.Tensor]], k: int) -> torch.Tensor:
    """The loss over consecutive layer pairs `[(f_s, f_t), ...]` (maps, equal channels per pair)."""
    total, before = pairs[0][0].new_zeros(()), None
    for f_s, f_t in pairs:
        s_t, v_t = singular(f_t.detach(), k)
        _, v_s = singular(f_s, k + 3)
        scale = s_t.unsqueeze(1)
        v_s, v_t = align(v_s, v_t) * scale, v_t * scale
        if before is not None:
            sq = (_rbf(v_s, before[0]) - _rbf(v_t, before[1])).pow(2)
            total = total + _finite(sq).sum()
        before = (v_s, v_t)
    return total / len(pairs[0][0])


@dataclass
class KDSVDConfig:
    name: str = "kdsvd"
    weight: float = 1.0
    # How many of the teacher's singular vectors are distilled (the student's k + 3 are aligned).
    k: int = 1
    # Layers by module path (lists paired in order, 2 at least); null = every stage of each model.
    student: Optional[Any] = None
    teacher: Optional[Any] = None


@HINT_METHODS.register
class KDSVD(LayerPairMethod):
    name = "kdsvd"
    schema = KDSVDConfig
    single = False
    default_stages = EVERY_STAGE
    revision = 2  # unequal stage counts paired from the first stage (`zip`, the reference); 1 kept the last

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        require(cfg.hint.k >= 1, "hint.k", cfg.hint.k, "must be an integer >= 1")
        refuse_vector_models(cfg, cls.name)

    def setup(self, student, teacher) -> None:
        if len(self.student_names) < 2:
            raise ConfigError(f"hint.student={self.student_names} is not allowed; hint=kdsvd relates "
                              f"consecutive layers: give two layer pairs at least")
        for (f_s, f_t), s, t in zip(self.pairs(student, teacher), self.student_names, self.teacher_names):
            require_maps(self.name, "student", s, f_s)
            require_maps(self.name, "teacher", t, f_t)
            if f_s.shape[1] != f_t.shape[1]:
                raise ConfigError(f"hint.student={s!r} has {f_s.shape[1]} channels and hint.teacher={t!r} "
                                  f"{f_t.shape[1]}; hint=kdsvd aligns singular vectors over channels: pair "
                                  f"layers of equal width")

    def forward(self, batch, clock, student, teacher):
        return {"hint": kdsvd_loss(self.pairs(student, teacher), self.cfg.k)}
