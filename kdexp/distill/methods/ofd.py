"""`hint=ofd`: overhaul of feature distillation (Heo, Kim, Yun, Park, Kwak & Choi, "A Comprehensive
Overhaul of Feature Distillation", ICCV 2019).

The student's pre-ReLU features pass a connector r (1x1 conv + batch norm) and match the teacher's
pre-ReLU features t (average-pooled to the student's size) under the partial L2 distance, which
ignores what the teacher's ReLU would discard: with the margin m (per channel),

    d(s, t) = (s − t)²  where t > 0 or (m < t ≤ 0 and s > t);  (s − m)²  where t ≤ m < s;  0 elsewhere
    hint = Σ_i (Σ_{c,h,w} mean_batch d(r_i(s_i), t_i)) / 2^(L−1−i),   loss = family loss + weight · hint

The margin is the expectation of the teacher's pre-ReLU response where it is negative, from the
batch norm before that ReLU (scale γ, shift β per channel, the response ~ N(β, γ²)):
m = β − |γ| · φ(β/|γ|) / Φ(−β/|γ|), or −3|γ| where Φ(−β/|γ|) ≤ 0.001.

Recipe of the published numbers (mdistiller distillers/OFD.py, configs/cifar100/ofd.yaml): the
pre-ReLU outputs of every stage on both sides (`preact_feats[1:]`: kdexp's
`stages.k.<last block>.relu:input`; three on a CIFAR ResNet/WRN/ShuffleNet, four on VGG,
MobileNetV2, ResNet-50), the last ones paired where the counts differ (`_align_list`:
`l[-min_len:]`), the margin from each last block's batch norm before that ReLU
(`bn2`), connectors conv 1x1 (He-normal) + BN, deeper stages weighted more (…, 1/4, 1/2, 1), CE
weight 1 (kd=hinton loss.alpha=1), weight 0.001. The teacher's layers must be `<block>.relu:input`
of a block with a batch norm among its own modules (a CNN block's `stages.k.2:input`), or a WRN's
pre-ReLU features (`stages.1.0.relu1:input`, `stages.2.0.relu1:input`, `head.1:input`: each stage's
output through the next batch norm, whose margin they take, as the reference's `preact=True` and
`get_bn_before_relu`); the connectors are trainable parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from kdexp.config.checks import ConfigError
from kdexp.config.registry import HINT_METHODS
from kdexp.distill.features import INPUT, stage_preact_names
from kdexp.distill.methods.hint_layers import LayerPairMethod, paired
from kdexp.distill.methods.maps import require_pair_maps


@dataclass
class OFDConfig:
    name: str = "ofd"
    weight: float = 0.001
    # Lists of module paths, paired in order; null = the stages' pre-ReLU outputs.
    student: Any = None
    teacher: Any = None


def margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Per channel, E[x | x < 0] for x ~ N(β, γ²) of the batch norm's affine output (−3|γ| where
    that tail holds at most 0.1 %)."""
    s, m = bn.weight.detach().abs().float(), bn.bias.detach().float()
    tail = torch.special.ndtr(-m / s)
    density = torch.exp(-(m / s) ** 2 / 2) / math.sqrt(2 * math.pi)
    return torch.where(tail > 0.001, m - s * density / tail, -3 * s)


def partial_l2(source: torch.Tensor, target: torch.Tensor, margin_: torch.Tensor) -> torch.Tensor:
    """The partial L2 distance, summed over channels and positions, averaged over the batch."""
    m = margin_.view(1, -1, 1, 1).to(source)
    loss = ((source - m) ** 2 * ((source > m) & (target <= m))
            + (source - target) ** 2 * ((source > target) & (target > m) & (target <= 0))
            + (source - target) ** 2 * (target > 0))
    return loss.mean(dim=0).sum()


def connector(s_channels: int, t_channels: int) -> nn.Sequential:
    conv, bn = nn.Conv2d(s_channels, t_channels, 1, bias=False), nn.BatchNorm2d(t_channels)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / t_channels))  # as the reference: n = k·k·out
    return nn.Sequential(conv, bn)


def bn_before(teacher: nn.Module, layer: str) -> nn.BatchNorm2d:
    """The batch norm before the ReLU `<block>.relu:input` names: the last among the block's own
    modules (`bn2` of a BasicBlock), or else the last inside its last child that has one (a VGG
    stage's `convs`)."""
    modules = dict(teacher.named_modules())
    declared = getattr(teacher, "preact_bns", None) or {}
    if layer in declared:  # a pre-activation net (WRN): the next batch norm, named by the model
        return modules[declared[layer]]
    block = layer.removesuffix(INPUT).rpartition(".")[0]
    if not layer.endswith(INPUT) or block not in modules:
        raise ConfigError(f"hint.teacher={layer!r} is not allowed; hint=ofd takes the teacher's pre-ReLU features, "
                          f"`<block>.relu:input` of a block with a batch norm; this teacher's: "
                          f"{', '.join(stage_preact_names(teacher))}")
    bns = [m for m in modules[block].children() if isinstance(m, nn.BatchNorm2d)]
    for child in reversed(list(modules[block].children()) if not bns else []):
        bns = [m for m in child.modules() if isinstance(m, nn.BatchNorm2d)]
        if bns:
            break
    if not bns:
        raise ConfigError(f"hint.teacher={layer!r}: its block {block!r} has no batch norm of its own to take "
                          f"hint=ofd's margin from; use a teacher with batch norms (a resnet, or teacher.batch_norm=true on a cnn)")
    return bns[-1]


@HINT_METHODS.register
class OFD(LayerPairMethod):
    name = "ofd"
    schema = OFDConfig
    single = False
    # 3: pre-ReLU features of CNN/MLP stages (`stages.k.2:input`) and WRNs (the next batch norm's
    # output); 2: every stage (four on VGG, MobileNetV2, ResNet-50); 1 took the last three at most
    revision = 3

    def resolve(self, student, teacher) -> None:
        if not (self.student_names or self.teacher_names):
            self.student_names, self.teacher_names = paired(stage_preact_names(student),
                                                            stage_preact_names(teacher), last=True)
        super().resolve(student, teacher)
        self._margins = [margin(bn_before(teacher, layer)) for layer in self.teacher_names]

    def setup(self, student, teacher) -> None:
        require_pair_maps(self, student, teacher)
        pairs = self.pairs(student, teacher)
        self.connectors = nn.ModuleList(connector(s.shape[1], t.shape[1]) for s, t in pairs)
        for i, m in enumerate(self._margins):
            self.register_buffer(f"margin{i}", m.clone())

    def forward(self, batch, clock, student, teacher):
        pairs = self.pairs(student, teacher)
        total = 0.0
        for i, ((f_s, f_t), conn) in enumerate(zip(pairs, self.connectors)):
            source = conn(f_s)
            target = F.adaptive_avg_pool2d(f_t, source.shape[-2:])
            total = total + partial_l2(source, target, getattr(self, f"margin{i}")) / 2 ** (len(pairs) - i - 1)
        return {"hint": total}
