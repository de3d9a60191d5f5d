"""`hint=at`: attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention",
ICLR 2017).

The attention map of a feature map f (N, C, H, W) is the channel mean of its squares, flattened and
L2-normalised per sample: a(f) = normalize(mean_c f²). The student matches the teacher's at every
pair of layers j, and the pairs are summed:

    hint = Σ_j mean((a(f_s^j) − a(f_t^j))²),   loss = family loss + weight · hint

Maps of different sizes are average-pooled to the smaller one. Needs feature maps on both sides
(a CNN or ResNet student and teacher).

Recipe of the published numbers: RepDistiller (helper/loops.py, `distill == 'attention'`) sums
`at_loss` over `zip(feat_s[1:-1], feat_t[1:-1])`, the outputs of every stage after the stem (the
three residual stages of a CIFAR ResNet/WRN/ShuffleNet, the four of VGG, MobileNetV2 and ResNet-50;
mdistiller's AT: `feats[1:]`, the same), p = 2, and adds `-b 1000` × the sum (no halving): weight
β = 1000 on the sum, as here. Unset `hint.student` / `hint.teacher` are those stages, as many pairs
as the shallower model has, the first ones (`zip`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kdexp.config.registry import HINT_METHODS
from kdexp.config.checks import require
from kdexp.distill.methods.hint_layers import LayerPairMethod
from kdexp.distill.methods.maps import EVERY_STAGE, require_pair_maps

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
    # One module path or a list, paired in order; null = every stage (paired from the first).
    student: Any = None
    teacher: Any = None


@HINT_METHODS.register
class AttentionTransfer(LayerPairMethod):
    name = "at"
    schema = ATConfig
    single = False
    default_stages = EVERY_STAGE
    # 2: the recipe's sum over stages 0-2 (1: the last stage alone); 3: every stage (four on VGG,
    # MobileNetV2, ResNet-50), and unequal stage counts paired from the first stage, as the reference.
    revision = 3

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        for role in ("student", "teacher"):
            require(cfg[role].name not in _VECTOR_MODELS, f"model@{role}", cfg[role].name,
                    f"hint=at needs feature maps, and an {cfg[role].name} has none; use a cnn or resnet "
                    f"{role} (e.g. model@{role}=cnn), or hint=fitnets")

    def setup(self, student, teacher) -> None:
        require_pair_maps(self, student, teacher)

    def forward(self, batch, clock, student, teacher):
        return {"hint": sum(at_loss(f_s, f_t) for f_s, f_t in self.pairs(student, teacher))}
