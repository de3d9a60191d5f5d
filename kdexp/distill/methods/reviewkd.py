"""`hint=reviewkd`: knowledge review (Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge
Review", CVPR 2021).

The student's features at several levels, shallow to deep (f_1 … f_L; the last is the pooled
penultimate vector, as a 1 × 1 map), are fused from the deepest down by attention-based fusion
(ABF) modules: level L gives r_L = conv1(f_L); level i < L fuses its own conv1(f_i) with the
residual r_{i+1} (nearest-upsampled) by a 2-channel sigmoid attention, r_i = a₀ · conv1(f_i) + a₁ · r_{i+1},
and outputs o_i = conv3x3(r_i) (resized to the teacher's level i). Each output matches the
teacher's feature t_i by the hierarchical context loss (HCL): the MSE at full size and at the
pyramid levels 4, 2, 1 smaller than it, weighted 1, ½, ¼, ⅛ and normalised by their sum:

    hint = min(epoch / warmup, 1) · Σ_i HCL(o_i, t_i),   loss = family loss + weight · hint

Recipe of the published numbers (mdistiller distillers/ReviewKD.py, configs/cifar100/reviewkd.yaml
for ResNet32x4 → ResNet8x4): student levels = the outputs of every stage and the pooled feature
(`feats[1:] + pooled`, after ReLU: STU_PREACT false; three stages on a CIFAR ResNet, four on VGG and
MobileNetV2 in the authors' CIFAR code); teacher levels = every stage's pre-ReLU output and the
pooled feature (`preact_feats[1:] + pooled`); where the two have different numbers of stages, the
deepest ones are paired (the fusion modules are built from the deepest level down); ABF mid channels
min(512, channels of the deepest student level); CE weight 1 (kd=hinton loss.alpha=1), weight 5,
warmup 20 of its 240 epochs (linear from epoch 1; null: that fraction of `trainer.epochs`,
methods/warmup.py). Unset `hint.student` / `hint.teacher` are those levels
(`stages.k`, `stages.k.<last block>.relu:input`, the classifier's input). The ABF modules are the
method's trainable parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdexp.config.registry import HINT_METHODS
from kdexp.distill.features import classifier_input, stage_names, stage_preact_names
from kdexp.distill.methods import warmup
from kdexp.distill.methods.hint_layers import LayerPairMethod, paired

MAX_MID_CHANNELS = 512  # mdistiller's min(512, ...)
PYRAMID = (4, 2, 1)


@dataclass
class ReviewKDConfig:
    name: str = "reviewkd"
    weight: float = 5.0
    # Epochs over which the term rises linearly to its weight (0: from the start).
    warmup: int | None = None  # null: the recipe's 20 of 240 epochs, scaled to trainer.epochs
    # Lists of module paths, shallow to deep, paired in order; null = the recipe's levels.
    student: Any = None
    teacher: Any = None


def as_map(f: torch.Tensor) -> torch.Tensor:
    """A feature as a (N, C, H, W) map: a vector is a 1 × 1 map."""
    return f if f.dim() == 4 else f.flatten(1)[:, :, None, None]


def hcl_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """The hierarchical context loss of one level: MSE at full size and at each pyramid size
    smaller than the map, weighted 1, 1/2, 1/4, ... and divided by the weights' sum."""
    loss, weight, total = F.mse_loss(f_s, f_t), 1.0, 1.0
    for size in PYRAMID:
        if size >= f_s.shape[2]:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size))
        total += weight
    return loss / total


class ABF(nn.Module):
    """Attention-based fusion of one level: its 1x1-projected feature, fused with the deeper level's
    residual when `fuse`; returns (the output matched to the teacher, the residual passed up)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)  # as the reference
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, out_size) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, x.shape[2:], mode="nearest")
            a = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * a[:, :1] + residual * a[:, 1:]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, tuple(out_size), mode="nearest")
        return self.conv2(x), x


@HINT_METHODS.register
class ReviewKD(LayerPairMethod):
    name = "reviewkd"
    schema = ReviewKDConfig
    single = False
    # 3: a CNN's or WRN's teacher levels are its pre-ReLU features (features.stage_preact_names);
    # 2: every stage (four on VGG, MobileNetV2, ResNet-50; 1 took the last three at most), and the
    # warm-up scaled to the run's epochs (methods/warmup.py)
    revision = 3

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        warmup.resolve(cfg.hint, "hint.warmup", cfg.trainer.epochs, recipe_warmup=20)

    def resolve(self, student, teacher) -> None:
        if not (self.student_names or self.teacher_names):
            levels_s, levels_t = paired(stage_names(student), stage_preact_names(teacher), last=True)
            self.student_names = levels_s + [classifier_input(student)]
            self.teacher_names = levels_t + [classifier_input(teacher)]
        super().resolve(student, teacher)

    def setup(self, student, teacher) -> None:
        pairs = [(as_map(s), as_map(t)) for s, t in self.pairs(student, teacher)]
        mid = min(MAX_MID_CHANNELS, pairs[-1][0].shape[1])
        self.abfs = nn.ModuleList(ABF(s.shape[1], mid, t.shape[1], fuse=i < len(pairs) - 1)
                                  for i, (s, t) in enumerate(pairs))

    def forward(self, batch, clock, student, teacher):
        pairs = [(as_map(s), as_map(t)) for s, t in self.pairs(student, teacher)]
        out, residual = self.abfs[-1](pairs[-1][0], None, pairs[-1][1].shape[2:])
        outputs = [out]
        for level in reversed(range(len(pairs) - 1)):
            out, residual = self.abfs[level](pairs[level][0], residual, pairs[level][1].shape[2:])
            outputs.insert(0, out)
        return {"hint": warmup.ramp(clock.epoch, self.cfg.warmup) * sum(hcl_loss(o, t) for o, (_, t) in zip(outputs, pairs))}
