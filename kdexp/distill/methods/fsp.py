"""`hint=fsp`: flow of solution procedure (Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation:
Fast Optimization, Network Minimization and Transfer Learning", CVPR 2017).

The FSP matrix between two feature maps a (C₁, H, W) and b (C₂, H, W) of one model is
G(a, b) = (1 / HW) Σ_{h,w} a_{:,h,w} b_{:,h,w}ᵀ (C₁ × C₂; the larger map average-pooled to the
smaller). For consecutive layers (l_1, …, l_L) the student matches the teacher's matrices:

    fsp = Σ_{i<L} mean((G_s(l_i, l_{i+1}) − G_t(l_i, l_{i+1}))²)

FSP is an initialisation: its own stage, `fsp_init`, trains the student on `fsp` alone for
`init_epochs` epochs; then the student is trained by the family's loss, plus weight · fsp (0 in the
recipe: RepDistiller's distillation stage adds no FSP term, `loss_kd = 0`).

Recipe of the published numbers (RepDistiller `--distill fsp -a 0`): layers `feat[:-1]` = the stem's
output and every stage's (kdexp: `stem`, `stages.0..2` on a CIFAR ResNet; the first ones where the
counts differ: `zip`), 30 init epochs, CE weight 1 in the
second stage (kd=hinton loss.alpha=1). The student and teacher need equal channels at each layer
(RepDistiller raises otherwise; here a one-line error before training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdexp.config.checks import ConfigError
from kdexp.config.registry import HINT_METHODS
from kdexp.distill.features import stage_names
from kdexp.distill.methods.base import MethodStage
from kdexp.distill.methods import warmup
from kdexp.distill.methods.hint_layers import LayerPairMethod, paired


@dataclass
class FSPConfig:
    name: str = "fsp"
    # The FSP term's weight in the distillation stage (the recipe: none).
    weight: float = 0.0
    # Epochs of the initialisation stage (the student trained on the FSP loss alone).
    # null: RepDistiller's 30 of 240 epochs scaled to trainer.epochs (methods/warmup.py)
    init_epochs: Any = None
    # Lists of module paths, in order; null = the stem (when it has weights) and the stages.
    student: Any = None
    teacher: Any = None


def fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, C_a, C_b): the spatial mean of the outer products of a's and b's channel vectors."""
    size = min(a.shape[2:], b.shape[2:])
    a = a if a.shape[2:] == size else F.adaptive_avg_pool2d(a, size)
    b = b if b.shape[2:] == size else F.adaptive_avg_pool2d(b, size)
    return torch.einsum("nahw,nbhw->nab", a, b) / (a.shape[2] * a.shape[3])


def fsp_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    return sum((fsp_matrix(s0, s1) - fsp_matrix(t0, t1)).pow(2).mean()
               for s0, s1, t0, t1 in zip(student, student[1:], teacher, teacher[1:]))


def _layers(model: nn.Module) -> list[str]:
    has_stem = any(True for _ in getattr(model, "stem", nn.Identity()).parameters())
    return (["stem"] if has_stem else []) + stage_names(model)


@HINT_METHODS.register
class FSP(LayerPairMethod):
    name = "fsp"
    schema = FSPConfig
    single = False
    revision = 2  # unequal layer counts paired from the first (RepDistiller's `zip`); 1 kept the last

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        warmup.resolve_stage(cfg.hint, "hint.init_epochs", cfg.trainer.epochs, recipe_stage=30)

    def resolve(self, student, teacher) -> None:
        if not (self.student_names or self.teacher_names):
            self.student_names, self.teacher_names = paired(_layers(student), _layers(teacher))
        super().resolve(student, teacher)

    def setup(self, student, teacher) -> None:
        pairs = self.pairs(student, teacher)
        if len(pairs) < 2:
            raise ConfigError(f"hint.student={self.student_names}: hint=fsp relates consecutive layers; name at least two")
        for (f_s, f_t), s_name, t_name in zip(pairs, self.student_names, self.teacher_names):
            if f_s.dim() != 4 or f_t.dim() != 4 or f_s.shape[1] != f_t.shape[1]:
                raise ConfigError(f"hint.student={s_name!r} {tuple(f_s.shape[1:])} and hint.teacher={t_name!r} "
                                  f"{tuple(f_t.shape[1:])}: hint=fsp needs feature maps with as many channels on both "
                                  f"sides (a student and teacher of equal widths, e.g. resnet32x4 -> resnet8x4)")

    def init_loss(self, batch, clock, student, teacher):
        loss = self(batch, clock, student, teacher)["hint"]
        return {"loss": loss, "fsp": loss}

    def stages(self, student):
        return [MethodStage("fsp_init", int(self.cfg.init_epochs), {"student": student}, self.init_loss)]

    def forward(self, batch, clock, student, teacher):
        pairs = self.pairs(student, teacher)
        return {"hint": fsp_loss([s for s, _ in pairs], [t for _, t in pairs])}
