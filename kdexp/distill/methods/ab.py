"""`hint=ab`: activation boundaries (Heo, Lee, Yun & Choi, "Knowledge Transfer via Distillation of
Activation Boundaries Formed by Hidden Neurons", AAAI 2019).

The student learns where the teacher's neurons switch on: with the student's pre-ReLU feature s
(through a connector r where the shapes differ) and the teacher's pre-ReLU feature t, the
alternative L2 loss with margin μ pushes r(s) above μ where t > 0 and below −μ where t ≤ 0:

    ab(s, t) = Σ (r(s) + μ)² · [r(s) > −μ, t ≤ 0] + (r(s) − μ)² · [r(s) ≤ μ, t > 0]
    AB = (3 / 1000) · Σ_i 2^(i − L + 1) · ab(s_i, t_i) / B        (deeper layers weigh more)

AB is an initialisation: its own stage, `ab_init`, trains the student and the connectors on AB
alone for `init_epochs`; then the student is trained by the family's loss, plus weight · AB (0 in
the recipe: RepDistiller's distillation stage adds no AB term, `loss_kd = 0`).

Recipe of the published numbers (RepDistiller `--distill abound -a 0 -b 1`, distiller_zoo/AB.py):
every stage's pre-ReLU output on both sides (`zip(feat_s[1:-1], feat_t[1:-1])` with `preact=True`:
kdexp's `stages.k.<last block>.relu:input`; four stages on VGG, MobileNetV2, ResNet-50), the first
pairs where the counts differ (`zip`), μ = 1, connectors the identity where channels and size agree,
else a conv (stride 2 for a halved map, a transposed conv for a doubled one) + batch norm, 30 init
epochs, CE weight 1 in the second stage (kd=hinton loss.alpha=1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdexp.config.checks import ConfigError, require
from kdexp.config.registry import HINT_METHODS
from kdexp.distill.features import stage_preact_names
from kdexp.distill.methods.base import MethodStage
from kdexp.distill.methods import warmup
from kdexp.distill.methods.hint_layers import LayerPairMethod, paired
from kdexp.distill.methods.maps import require_pair_maps


@dataclass
class ABConfig:
    name: str = "ab"
    # The AB term's weight in the distillation stage (the recipe: none).
    weight: float = 0.0
    # Epochs of the initialisation stage (student and connectors trained on AB alone).
    # null: RepDistiller's 30 of 240 epochs scaled to trainer.epochs (methods/warmup.py)
    init_epochs: Any = None
    margin: float = 1.0
    # Lists of module paths, paired in order; null = the stages' pre-ReLU outputs.
    student: Any = None
    teacher: Any = None


def alternative_l2(source: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """The summed alternative L2 loss of one layer (not yet divided by the batch)."""
    return ((source + margin) ** 2 * ((source > -margin) & (target <= 0))
            + (source - margin) ** 2 * ((source <= margin) & (target > 0))).sum()


def ab_connector(s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> nn.Module:
    """RepDistiller's Connector: the identity where channels and height agree, else ConvReg
    without its ReLU (a conv chosen by the sizes, then batch norm)."""
    (cs, hs, ws), (ct, ht, wt) = s_shape, t_shape
    if cs == ct and hs == ht:
        return nn.Identity()
    if hs == 2 * ht:
        conv: nn.Module = nn.Conv2d(cs, ct, 3, stride=2, padding=1)
    elif 2 * hs == ht:
        conv = nn.ConvTranspose2d(cs, ct, 4, stride=2, padding=1)
    elif hs >= ht and ws >= wt:
        conv = nn.Conv2d(cs, ct, (1 + hs - ht, 1 + ws - wt))
    else:
        raise ConfigError(f"hint=ab: a student map of {hs}x{ws} cannot be connected to the teacher's {ht}x{wt}; "
                          f"allowed: at least the teacher's size, or half of it (choose hint.student / hint.teacher)")
    return nn.Sequential(conv, nn.BatchNorm2d(ct))


@HINT_METHODS.register
class ActivationBoundaries(LayerPairMethod):
    name = "ab"
    schema = ABConfig
    single = False
    # 3: pre-ReLU features of CNN/MLP stages and WRNs (features.stage_preact_names); 2: every
    # stage, the first pairs (`zip`); 1 took the last three at most
    revision = 3

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        warmup.resolve_stage(cfg.hint, "hint.init_epochs", cfg.trainer.epochs, recipe_stage=30)
        require(cfg.hint.margin > 0, "hint.margin", cfg.hint.margin, "allowed: a margin > 0")

    def resolve(self, student, teacher) -> None:
        if not (self.student_names or self.teacher_names):
            self.student_names, self.teacher_names = paired(stage_preact_names(student), stage_preact_names(teacher))
        super().resolve(student, teacher)

    def setup(self, student, teacher) -> None:
        require_pair_maps(self, student, teacher)
        pairs = self.pairs(student, teacher)
        self.connectors = nn.ModuleList(ab_connector(tuple(s.shape[1:]), tuple(t.shape[1:])) for s, t in pairs)

    def init_loss(self, batch, clock, student, teacher):
        loss = self(batch, clock, student, teacher)["hint"]
        return {"loss": loss, "ab": loss}

    def stages(self, student):
        return [MethodStage("ab_init", int(self.cfg.init_epochs), {"student": student, "connectors": self.connectors},
                            self.init_loss)]

    def forward(self, batch, clock, student, teacher):
        pairs = self.pairs(student, teacher)
        n = len(pairs)
        total = sum(2.0 ** (i - n + 1) * alternative_l2(conn(s), t, self.cfg.margin)
                    for i, ((s, t), conn) in enumerate(zip(pairs, self.connectors)))
        return {"hint": total / pairs[0][0].shape[0] * 3 / 1000}
