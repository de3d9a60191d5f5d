"""`kd=ctkd`: Curriculum Temperature for Knowledge Distillation (Li et al., AAAI 2023).

Hinton's loss (with the family's alpha) at a *learned* temperature τ = t_min + (t_max − t_min) ·
sigmoid(θ), one global parameter θ (initialised to 1, as the authors' global temperature module).
θ is trained adversarially: its gradient passes a gradient-reversal layer scaled by λ, so the
temperature ascends the distillation loss (makes the task harder) while the student descends it.
λ rises with a cosine curriculum from 0 to `lambda_max` over `warmup` epochs:

    λ(epoch) = lambda_max · (1 − cos(π · min(epoch, warmup) / warmup)) / 2
    loss = alpha · CE(z_s, y) + (1 − alpha) · τ² · KL(softmax(z_t/τ) ‖ softmax(z_s/τ))

θ is a trainable part of the phase: optimised with the student and kept in its checkpoints.
Defaults as the authors': t_min = 1, t_max = 21, warmup = 10 of their 240 epochs (null: that fraction
of `trainer.epochs`, methods/warmup.py), lambda_max = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdexp.distill.functional import kd_kl
from kdexp.config.registry import KD_METHODS
from kdexp.config.checks import require, require_temperature
from kdexp.distill.methods import warmup
from kdexp.distill.methods.base import LogitMethod


class GradientReversal(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by −λ."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lam * grad, None


def curriculum(epoch: int, warmup: int, lambda_max: float) -> float:
    """λ of the epoch (1-based): 0 → lambda_max along half a cosine over `warmup` epochs."""
    if warmup <= 0:
        return lambda_max
    return lambda_max * (1 - math.cos(math.pi * min(epoch, warmup) / warmup)) / 2


@dataclass
class CTKDConfig:
    name: str = "ctkd"
    t_min: float = 1.0
    t_max: float = 21.0
    warmup: int | None = None  # null: the recipe's 10 of 240 epochs, scaled to trainer.epochs
    lambda_max: float = 1.0


@KD_METHODS.register
class CTKD(LogitMethod):
    name = "ctkd"
    schema = CTKDConfig
    family_keys = ("alpha",)
    instead_of = {"temperature": "kd.t_min and kd.t_max (a learned temperature)"}
    temperatures = ("t_min", "t_max")
    weights = ("lambda_max",)

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        require(cfg.kd.t_min < cfg.kd.t_max, "kd.t_max", cfg.kd.t_max, f"must be > kd.t_min ({cfg.kd.t_min})")
        warmup.resolve(cfg.kd, "kd.warmup", cfg.trainer.epochs, recipe_warmup=10)
        require_temperature("kd.t_max", cfg.kd.t_max)

    def __init__(self, cfg, loss_cfg):
        super().__init__(cfg, loss_cfg)
        self.theta = nn.Parameter(torch.tensor(1.0))

    def temperature(self, lam: float = 0.0) -> torch.Tensor:
        theta = GradientReversal.apply(self.theta, lam)
        return self.cfg.t_min + (self.cfg.t_max - self.cfg.t_min) * torch.sigmoid(theta)

    def forward(self, batch, clock, student, teacher):
        lam = curriculum(clock.epoch, self.cfg.warmup, self.cfg.lambda_max)
        tau = self.temperature(lam)
        alpha = self.loss_cfg.alpha
        ce = F.cross_entropy(student.logits, batch[1])
        kd = kd_kl(student.logits, teacher.logits, tau)
        return {"loss": alpha * ce + (1 - alpha) * kd, "ce": ce, "kd": kd, "temperature": tau.detach()}
