"""`hint=pkt`: probabilistic knowledge transfer (Passalis & Tefas, "Learning Deep Representations
with Probabilistic Knowledge Transfer", ECCV 2018).

The embeddings e (N, D) of a batch define, through the cosine kernel K(a, b) = (1 + cos(a, b)) / 2,
a conditional distribution over the batch for each sample: p(j | i) = K(e_i, e_j) / Σ_k K(e_i, e_k).
The student matches the teacher's distributions in KL:

    hint = mean_{i,j} p_t(j | i) · log((p_t(j | i) + ε) / (p_s(j | i) + ε)),   ε = 1e-7

(the mean over the N × N entries, as the authors' code: KL per sample divided by N). The kernel
makes it free of each embedding's scale and width, so no connector is needed.

Recipe of the published numbers (RepDistiller `--distill pkt -a 0 -b 30000`, mdistiller PKT
FEAT_WEIGHT 30000; CRD Table 1, resnet32x4 → resnet8x4: 73.64): CE + 30000 · hint on the penultimate
embedding (`feat[-1]`), batch 64. Defaults here: weight 30000, layers = each model's embedding;
`loss.alpha=1` makes the family loss CE alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from kdexp.config.registry import HINT_METHODS
from kdexp.distill.methods.embedding import EmbeddingMethod

EPS = 1e-7


def conditional(e: torch.Tensor) -> torch.Tensor:
    """(N, N) p(j | i) from the cosine kernel (1 + cos) / 2, each row summing to 1."""
    unit = F.normalize(e.flatten(1), dim=1, eps=EPS)
    kernel = (unit @ unit.t() + 1) / 2
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    p_s, p_t = conditional(f_s), conditional(f_t.detach())
    return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()


@dataclass
class PKTConfig:
    name: str = "pkt"
    weight: float = 30000.0
    # Layers by module path; null = each model's penultimate embedding (the classifier's input).
    student: Optional[Any] = None
    teacher: Optional[Any] = None


@HINT_METHODS.register
class PKT(EmbeddingMethod):
    name = "pkt"
    schema = PKTConfig

    def forward(self, batch, clock, student, teacher):
        return {"hint": pkt_loss(*self.pair(student, teacher))}
