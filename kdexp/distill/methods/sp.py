"""`hint=sp`: similarity-preserving distillation (Tung & Mori, "Similarity-Preserving Knowledge
Distillation", ICCV 2019).

Inputs that the teacher sees as alike should look alike to the student. With Q the batch's
activations flattened to (N, C·H·W), the similarity G = Q Qᵀ (N × N) is L2-normalised row by row,
and the student matches the teacher's:

    hint = ‖G̃_t − G̃_s‖²_F / N²,   summed over the layer pairs

G compares samples with samples, so the student's and the teacher's layers may differ in every
size; permuting the batch permutes both G alike and leaves the loss unchanged. On a vector layer
(an MLP) Q is the vectors themselves: the formula needs no spatial layout.

Recipe of the published numbers (RepDistiller `--distill similarity -a 0 -b 3000`, mdistiller SP
FEAT_WEIGHT 3000; CRD Table 1, resnet32x4 → resnet8x4: 72.94): CE + 3000 · hint on the output of
the last stage (RepDistiller `feat[-2]`, mdistiller `feats[-1]`), batch 64. Defaults here: weight
3000, layers = the last stage of each model; `loss.alpha=1` makes the family loss CE alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from kdexp.config.registry import HINT_METHODS
from kdexp.distill.methods.hint_layers import LayerPairMethod


def similarity(f: torch.Tensor) -> torch.Tensor:
    """(N, N) Gram matrix of the flattened activations, each row L2-normalised."""
    q = f.flatten(1)
    return F.normalize(q @ q.t(), dim=1)


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    n = len(f_s)
    return (similarity(f_t.detach()) - similarity(f_s)).pow(2).sum() / (n * n)


@dataclass
class SPConfig:
    name: str = "sp"
    weight: float = 3000.0
    # Layers by module path (one, or lists paired in order); null = the last stage of each model.
    student: Optional[Any] = None
    teacher: Optional[Any] = None


@HINT_METHODS.register
class SimilarityPreserving(LayerPairMethod):
    name = "sp"
    schema = SPConfig
    single = False
    default_stages = (-1,)

    def forward(self, batch, clock, student, teacher):
        return {"hint": sum(sp_loss(f_s, f_t) for f_s, f_t in self.pairs(student, teacher))}
