"""`hint=vid`: variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai,
"Variational Information Distillation for Knowledge Transfer", CVPR 2019).

VID maximises a variational lower bound on the mutual information between a teacher layer t and a
student layer s: the teacher's activation is modelled as a Gaussian whose mean μ(s) a small
network predicts from the student's, with a learned variance σ_c² per teacher channel:

    −log q(t | s) = Σ_c,h,w  ½ ((t_chw − μ_chw(s))² / σ_c² + log σ_c²) + const
    hint = mean over N, C, H, W of ½ ((t − μ(s))² / σ² + log σ²),   summed over the layer pairs
    σ_c² = softplus(α_c) + ε

μ is three 1×1 convolutions without bias (C_s → C_t → C_t → C_t, ReLU between; PyTorch's default
init), α_c starts at softplus⁻¹(5 − ε) (σ² = 5): both are trainable parts, optimised with the
student and kept in its checkpoints. Maps of different sizes are average-pooled to the smaller one;
a vector layer is a 1×1 map (so an MLP student works).

Recipe of the published numbers (RepDistiller `--distill vid -a 0 -b 1`, mdistiller VID
FEAT_WEIGHT 1, INIT_PRED_VAR 5, EPS 1e-5; CRD Table 1, resnet32x4 → resnet8x4: 73.09): CE + 1 · hint
summed over every stage after the stem (`feat[1:-1]`), batch 64. Defaults here: weight 1,
init_var 5, eps 1e-5, layers = every stage of both models (as many pairs as the shallower has, the
first ones: `zip`); `loss.alpha=1` makes the family loss CE alone. (mdistiller keeps α in a plain list, so
its variances are never trained; RepDistiller's, followed here, are parameters.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kdexp.config.checks import require
from kdexp.config.registry import HINT_METHODS
from kdexp.distill.methods.hint_layers import LayerPairMethod
from kdexp.distill.methods.maps import EVERY_STAGE, as_map, common_size


def regressor(c_s: int, c_t: int) -> nn.Sequential:
    """μ: the student's C_s channels → the teacher's C_t, three 1×1 convolutions, ReLU between."""
    return nn.Sequential(nn.Conv2d(c_s, c_t, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(c_t, c_t, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(c_t, c_t, 1, bias=False))


def inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


def vid_loss(mean: torch.Tensor, f_t: torch.Tensor, log_scale: torch.Tensor, eps: float) -> torch.Tensor:
    """The Gaussian negative log-likelihood (without its constant) of the teacher's `f_t` under the
    predicted `mean` and the per-channel variance softplus(log_scale) + eps."""
    var = (F.softplus(log_scale) + eps).view(1, -1, 1, 1)
    return (0.5 * ((mean - f_t) ** 2 / var + var.log())).mean()


@dataclass
class VIDConfig:
    name: str = "vid"
    weight: float = 1.0
    # The variance σ² every teacher channel starts at, and the floor ε added to it.
    init_var: float = 5.0
    eps: float = 1e-5
    # Layers by module path (one, or lists paired in order); null = every stage of each model.
    student: Optional[Any] = None
    teacher: Optional[Any] = None


@HINT_METHODS.register
class VID(LayerPairMethod):
    name = "vid"
    schema = VIDConfig
    single = False
    default_stages = EVERY_STAGE
    revision = 2  # unequal stage counts paired from the first stage (`zip`, the reference); 1 kept the last

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        require(math.isfinite(cfg.hint.eps) and cfg.hint.eps > 0, "hint.eps", cfg.hint.eps,
                "must be a finite number > 0")
        require(math.isfinite(cfg.hint.init_var) and cfg.hint.init_var > cfg.hint.eps, "hint.init_var",
                cfg.hint.init_var, f"must be a finite number > hint.eps ({cfg.hint.eps})")

    def setup(self, student, teacher) -> None:
        pairs = [(as_map(f_s), as_map(f_t)) for f_s, f_t in self.pairs(student, teacher)]
        start = inverse_softplus(self.cfg.init_var - self.cfg.eps)
        device = pairs[0][0].device
        self.regressors = nn.ModuleList(regressor(f_s.shape[1], f_t.shape[1]) for f_s, f_t in pairs).to(device)
        self.log_scales = nn.ParameterList(nn.Parameter(torch.full((f_t.shape[1],), start, device=device))
                                           for _, f_t in pairs)

    def forward(self, batch, clock, student, teacher):
        total = 0
        for (f_s, f_t), mu, log_scale in zip(self.pairs(student, teacher), self.regressors, self.log_scales):
            f_s, f_t = common_size(as_map(f_s), as_map(f_t))
            total = total + vid_loss(mu(f_s), f_t, log_scale, self.cfg.eps)
        return {"hint": total}
