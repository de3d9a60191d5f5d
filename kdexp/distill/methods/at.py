"""`hint=at`: attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention",
ICLR 2017).

The attention map of a feature map f (N, C, H, W) is the channel mean of its squares, flattened and
L2-normalised per sample: a(f) = normalize(mean_c f²). The student matches the teacher's:

    hint = mean((a(f_s) − a(f_t))²),   loss = family loss + weight · hint

Maps of different sizes are average-pooled to the smaller one. Needs feature maps on both sides
(a CNN or ResNet student and teacher); weight β = 1000 as in RepDistiller / mdistiller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from kdexp.config.registry import HINT_METHODS
from kdexp.config.checks import ConfigError, require
from kdexp.distill.methods.hint_layers import LayerPairMethod

# Models whose every layer output is a vector: AT cannot apply to them.
_VECTOR_MODELS = ("mlp",)


def attention(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f.pow(2).mean(dim=1).flatten(1))


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    size = min(f_s.shape[2:], f_t.shape[2:])
    if f_s.shape[2:] != size:
        f_s = F.adaptive_avg_pool2d(f_s, size)
    if f_t.shape[2:] != size:
        f_t = F.adaptive_avg_pool2d(f_t, size)
    return (attention(f_s) - attention(f_t)).pow(2).mean()


@dataclass
class ATConfig:
    name: str = "at"
    weight: float = 1000.0
    student: Optional[str] = None
    teacher: Optional[str] = None


@HINT_METHODS.register
class AttentionTransfer(LayerPairMethod):
    name = "at"
    schema = ATConfig

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        for role in ("student", "teacher"):
            require(cfg[role].name not in _VECTOR_MODELS, f"model@{role}", cfg[role].name,
                    f"hint=at needs feature maps, and an {cfg[role].name} has none; use a cnn or resnet "
                    f"{role} (e.g. model@{role}=cnn), or hint=fitnets")

    def setup(self, student, teacher) -> None:
        f_s, f_t = self.pair(student, teacher)
        for role, f, layer in (("student", f_s, self.student_layer), ("teacher", f_t, self.teacher_layer)):
            if f.dim() != 4:
                raise ConfigError(f"hint.{role}={layer!r} gives features of shape {tuple(f.shape[1:])}; "
                                  f"hint=at needs feature maps (C, H, W): choose a convolutional layer")

    def forward(self, batch, clock, student, teacher):
        return {"hint": at_loss(*self.pair(student, teacher))}
