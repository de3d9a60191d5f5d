"""`hint=cc`: correlation congruence (Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang, "Correlation
Congruence for Knowledge Distillation", ICCV 2019).

The paper matches the correlation between instances (a Gaussian kernel in its Taylor expansion).
The published CIFAR-100 numbers come from the authors' code as RepDistiller restructured it, which
computes something simpler; this is that code's loss. Both embeddings (N, D) go through learned
linear maps to `dim` (= 128) features, φ_s and φ_t (trainable parts, optimised with the student),
and with δ_i = |φ_s(e_i^s) − φ_t(e_i^t)| (element-wise) the loss correlates each sample's
difference with the next one's in the batch:

    hint = mean_{i=1..N−1} Σ_d δ_i,d · δ_{i+1},d

Recipe of the published numbers (RepDistiller `--distill correlation -a 0 -b 0.02`, `--feat_dim
128`; CRD Table 1, resnet32x4 → resnet8x4: 72.97): CE + 0.02 · hint on the penultimate embedding
(`feat[-1]`), both embeddings `LinearEmbed` (Linear with bias, no normalisation), batch 64.
Defaults here: weight 0.02, dim 128, layers = each model's embedding; `loss.alpha=1` makes the
family loss CE alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from kdexp.config.checks import require
from kdexp.config.registry import HINT_METHODS
from kdexp.distill.methods.embedding import EmbeddingMethod


def cc_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    """The reference's congruence of two (N, D) embeddings of the same samples."""
    delta = (e_s - e_t).abs()
    if len(delta) < 2:  # one sample has no neighbour (a batch's remainder)
        return delta.sum() * 0
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


@dataclass
class CCConfig:
    name: str = "cc"
    weight: float = 0.02
    # Width of the learned linear embeddings of the student's and the teacher's features.
    dim: int = 128
    # Layers by module path; null = each model's penultimate embedding (the classifier's input).
    student: Optional[Any] = None
    teacher: Optional[Any] = None


@HINT_METHODS.register
class CorrelationCongruence(EmbeddingMethod):
    name = "cc"
    schema = CCConfig

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        require(cfg.hint.dim >= 1, "hint.dim", cfg.hint.dim, "must be an integer >= 1")

    def setup(self, student, teacher) -> None:
        f_s, f_t = self.pair(student, teacher)
        self.embed_s = nn.Linear(f_s[0].numel(), self.cfg.dim).to(f_s.device)
        self.embed_t = nn.Linear(f_t[0].numel(), self.cfg.dim).to(f_t.device)

    def forward(self, batch, clock, student, teacher):
        f_s, f_t = self.pair(student, teacher)
        return {"hint": cc_loss(self.embed_s(f_s.flatten(1)), self.embed_t(f_t.flatten(1)))}
