"""`kd=dist`: DIST, "Knowledge Distillation from A Stronger Teacher" (Huang et al., NeurIPS 2022).

Instead of matching the softened probabilities exactly, match their relations, with the Pearson
correlation ρ. With P_s = softmax(z_s/τ), P_t = softmax(z_t/τ) (rows = samples, columns = classes):

    inter = 1 − mean_i ρ(P_s[i, :], P_t[i, :])   (per sample: the ranking of the classes)
    intra = 1 − mean_c ρ(P_s[:, c], P_t[:, c])   (per class: the ranking of the batch's samples)
    loss  = ce_weight · CE(z_s, y) + τ² · (beta · inter + gamma · intra)

The authors' code (hunto/image_classification_sota, `lib/models/losses/dist_kd.py`) computes
`DIST(beta, gamma, tau)` exactly so and multiplies it by `kd_loss_weight = 2`, beside CE at weight 1;
kdexp folds that factor into beta and gamma. Defaults: its CIFAR-100 setting
(`configs/strategies/distill/dist_cifar.yaml`: `kd: dist_t4`, kd_loss_weight 2 → beta = gamma = 2,
τ = 4, ce_weight = 1). Its ImageNet setting (`resnet_dist.yaml`: `kd: dist` = DIST(1, 1, τ = 1),
kd_loss_weight 2) is beta = gamma = 2, τ = 1 here: `kd.temperature=1`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdexp.config.registry import KD_METHODS
from kdexp.distill.methods.base import LogitMethod


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_parts(z_s: torch.Tensor, z_t: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(τ² · inter-class term, τ² · intra-class term)."""
    p_s, p_t = F.softmax(z_s / tau, dim=1), F.softmax(z_t / tau, dim=1)
    inter = 1 - pearson_rows(p_s, p_t).mean()
    intra = 1 - pearson_rows(p_s.t(), p_t.t()).mean()
    return inter * tau**2, intra * tau**2


@dataclass
class DISTConfig:
    name: str = "dist"
    beta: float = 2.0
    gamma: float = 2.0
    temperature: float = 4.0
    ce_weight: float = 1.0


@KD_METHODS.register
class DIST(LogitMethod):
    name = "dist"
    schema = DISTConfig
    instead_of = {"temperature": "kd.temperature", "alpha": "kd.ce_weight"}
    temperatures = ("temperature",)
    weights = ("beta", "gamma", "ce_weight")

    def forward(self, batch, clock, student, teacher):
        cfg = self.cfg
        ce = F.cross_entropy(student.logits, batch[1])
        inter, intra = dist_parts(student.logits, teacher.logits, cfg.temperature)
        kd = cfg.beta * inter + cfg.gamma * intra
        return {"loss": cfg.ce_weight * ce + kd, "ce": ce, "kd": kd, "inter": inter, "intra": intra}
