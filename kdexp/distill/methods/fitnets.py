"""`hint=fitnets`: FitNets, "Hints for Thin Deep Nets" (Romero et al., ICLR 2015).

A learned connector r maps the student's feature (the "guided" layer) to the teacher's (the "hint"
layer), and the student matches it in L2:

    hint = mean((r(f_s) − f_t)²),   loss = family loss + weight · hint

The connector handles shape differences: feature maps → a 1x1 convolution and batch norm (after
average-pooling the student's map to the teacher's size when they differ); anything else (e.g. the
default CNN teacher's conv block → an MLP student's hidden layer) → both flattened and a linear map.
It is a trainable part of the phase (optimised with the student, kept in its checkpoints).
Default weight 100 as mdistiller's CIFAR-100 recipe (there FitNets is trained in one stage with CE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F
from torch import nn

from kdexp.config.registry import HINT_METHODS
from kdexp.distill.methods.hint_layers import LayerPairMethod


@dataclass
class FitNetsConfig:
    name: str = "fitnets"
    weight: float = 100.0
    # Module paths of the guided (student) and hint (teacher) layers; null = the last stage.
    student: Optional[str] = None
    teacher: Optional[str] = None


def connector(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """The map from a student feature of `student_shape` to a teacher feature of `teacher_shape`
    (shapes without the batch dimension)."""
    if len(student_shape) == 3 and len(teacher_shape) == 3:
        layers: list[nn.Module] = []
        if student_shape[1:] != teacher_shape[1:]:
            layers.append(nn.AdaptiveAvgPool2d(teacher_shape[1:]))
        layers += [nn.Conv2d(student_shape[0], teacher_shape[0], 1, bias=False), nn.BatchNorm2d(teacher_shape[0])]
        return nn.Sequential(*layers)
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

    def setup(self, student, teacher) -> None:
        f_s, f_t = self.pair(student, teacher)
        self.connector = connector(tuple(f_s.shape[1:]), tuple(f_t.shape[1:])).to(f_s.device)

    def forward(self, batch, clock, student, teacher):
        f_s, f_t = self.pair(student, teacher)
        return {"hint": F.mse_loss(self.connector(f_s), f_t)}
