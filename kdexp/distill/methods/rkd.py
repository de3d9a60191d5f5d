"""`hint=rkd`: relational knowledge distillation (Park, Kim, Lu & Cho, "Relational Knowledge
Distillation", CVPR 2019).

The student matches the teacher's *relations* between the samples of a batch, not the features
themselves, on the embeddings e (N, D) (flattened):

    ψ_D(i, j) = ‖e_i − e_j‖ / μ,   μ = mean of the batch's non-zero distances   (distance-wise)
    ψ_A(i, j, k) = ⟨(e_i − e_j)/‖e_i − e_j‖, (e_k − e_j)/‖e_k − e_j‖⟩            (angle-wise)
    hint = distance · Huber(ψ_D^s, ψ_D^t) + angle · Huber(ψ_A^s, ψ_A^t)

Huber = smooth L1 (δ = 1), averaged over all pairs / triplets. Dividing by μ makes ψ_D free of the
embedding's scale, and ψ_A is free of scale and translation, so the student's and the teacher's
embeddings may have different widths and ranges.

Recipe of the published numbers (RepDistiller `--distill rkd -a 0 -b 1`, mdistiller RKD.yaml; CRD
Table 1, resnet32x4 → resnet8x4: 71.90): CE + 1 · (25 · distance + 50 · angle) on the penultimate
embedding (`feat[-1]`, the pooled features before the classifier), batch 64. Defaults here:
weight 1, distance 25, angle 50, layers = each model's embedding (`methods/embedding.py`);
`loss.alpha=1` makes the family loss CE alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from kdexp.config.registry import HINT_METHODS
from kdexp.distill.methods.embedding import EmbeddingMethod


def distances(e: torch.Tensor) -> torch.Tensor:
    """(N, N) Euclidean distances, divided by their mean over the pairs of distinct samples that
    are apart (the diagonal and duplicates do not count)."""
    d = torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")  # exact zeros on the diagonal
    apart = d > 0
    mean = (d * apart).sum() / apart.sum().clamp_min(1)
    return d / mean.clamp_min(1e-12)


def angles(e: torch.Tensor) -> torch.Tensor:
    """(N, N, N) cosines of the angle at e_j between e_i and e_k: entry [j, i, k]."""
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # [j, i] = (e_i − e_j)/‖·‖
    return unit @ unit.transpose(1, 2)


def rkd_parts(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance loss, angle loss) between the student's and the teacher's embeddings."""
    s, t = f_s.flatten(1), f_t.flatten(1).detach()
    if len(s) < 2:  # one sample has no relations (a batch's remainder)
        zero = s.sum() * 0
        return zero, zero
    return F.smooth_l1_loss(distances(s), distances(t)), F.smooth_l1_loss(angles(s), angles(t))


@dataclass
class RKDConfig:
    name: str = "rkd"
    weight: float = 1.0
    distance: float = 25.0
    angle: float = 50.0
    # Layers by module path; null = each model's penultimate embedding (the classifier's input).
    student: Optional[Any] = None
    teacher: Optional[Any] = None


@HINT_METHODS.register
class RKD(EmbeddingMethod):
    name = "rkd"
    schema = RKDConfig
    weights = ("weight", "distance", "angle")

    def forward(self, batch, clock, student, teacher):
        distance, angle = rkd_parts(*self.pair(student, teacher))
        return {"hint": self.cfg.distance * distance + self.cfg.angle * angle}
