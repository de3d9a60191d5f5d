"""`hint=fitnets`: FitNets, "Hints for Thin Deep Nets" (Romero et al., ICLR 2015).

A learned regressor r maps the student's feature (the "guided" layer) to the teacher's (the "hint"
layer), and the student matches it in L2:

    hint = mean((r(f_s) − f_t)²),   loss = family loss + weight · hint

The regressor is RepDistiller's / mdistiller's `ConvReg` (the reference the published numbers
come from): conv → batch norm → ReLU, where the conv bridges the spatial sizes — a 3x3 stride-2
conv when the student's map is twice the teacher's, a 4x4 stride-2 transposed conv when it is half,
a (1 + H_s − H_t) x (1 + W_s − W_t) conv otherwise (a 1x1 conv for equal sizes); a student map
smaller than the teacher's by another factor is refused. Feature vectors (e.g. the default CNN
teacher's conv block → an MLP student's hidden layer, which the reference has no case for) are
flattened and mapped by a linear layer. The regressor is a trainable part of the phase (optimised
with the student, kept in its checkpoints).

Recipe (mdistiller `FITNET`, RepDistiller `--distill hint`): weight 100, CE weight 1 (so use
`loss.alpha=1` with kd=hinton for the published row: CE + the hint, no KD), trained in one stage;
the hint layer is the reference's feature 2 (`HINT_LAYER=2`), i.e. the output of the second stage
(`stages.1`: the middle stage of a 3-stage CIFAR ResNet/WRN/ShuffleNet), for teacher and student
alike; a model with a single stage uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F
from torch import nn

from kdexp.config.checks import ConfigError
from kdexp.config.registry import HINT_METHODS
from kdexp.distill.methods.hint_layers import LayerPairMethod


@dataclass
class FitNetsConfig:
    name: str = "fitnets"
    weight: float = 100.0
    # Module paths of the guided (student) and hint (teacher) layers; null = the second stage
    # (`stages.1`, RepDistiller's HINT_LAYER=2), or the only one.
    student: Optional[str] = None
    teacher: Optional[str] = None


def _spatial(cin: int, cout: int, size_s: tuple[int, int], size_t: tuple[int, int], where: str) -> nn.Module:
    """ConvReg's conv from a `size_s` map to a `size_t` one (see the module docstring)."""
    (hs, ws), (ht, wt) = size_s, size_t
    if hs == 2 * ht:
        return nn.Conv2d(cin, cout, 3, stride=2, padding=1)
    if 2 * hs == ht:
        return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
    if hs >= ht and ws >= wt:
        return nn.Conv2d(cin, cout, (1 + hs - ht, 1 + ws - wt))
    raise ConfigError(f"{where}: the student's {hs}x{ws} feature map is smaller than the teacher's {ht}x{wt} "
                      f"(and not half of it); allowed: a student layer whose map is at least the teacher's, "
                      f"or half of it (choose hint.student / hint.teacher)")


def connector(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...],
              where: str = "hint=fitnets") -> nn.Module:
    """The regressor from a student feature of `student_shape` to a teacher feature of
    `teacher_shape` (shapes without the batch dimension)."""
    if len(student_shape) == 3 and len(teacher_shape) == 3:
        conv = _spatial(student_shape[0], teacher_shape[0], tuple(student_shape[1:]), tuple(teacher_shape[1:]), where)
        return nn.Sequential(conv, nn.BatchNorm2d(teacher_shape[0]), nn.ReLU())
    width_s, width_t = 1, 1
    for d in student_shape:
        width_s *= d
    for d in teacher_shape:
        width_t *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(width_s, width_t), nn.Unflatten(1, teacher_shape))


@HINT_METHODS.register
class FitNets(LayerPairMethod):
    name = "fitnets"
    schema = FitNetsConfig
    # RepDistiller's HINT_LAYER=2: feature 2 of [stem, stage 1, stage 2, ...] is `stages.1`.
    default_stages = (1,)
    # 2: the reference's ConvReg (with its ReLU) and middle-stage default; runs of the earlier recipe
    # (1x1 conv + BN, last stage) keep their keys and are not taken for these.
    revision = 2

    def setup(self, student, teacher) -> None:
        f_s, f_t = self.pair(student, teacher)
        where = f"hint.student={self.student_layer}, hint.teacher={self.teacher_layer}"
        self.connector = connector(tuple(f_s.shape[1:]), tuple(f_t.shape[1:]), where).to(f_s.device)

    def forward(self, batch, clock, student, teacher):
        f_s, f_t = self.pair(student, teacher)
        return {"hint": F.mse_loss(self.connector(f_s), f_t)}
