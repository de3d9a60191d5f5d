"""VGG with batch norm for CIFAR (Simonyan & Zisserman, ICLR 2015), as the CIFAR-100 KD benchmark
builds it (RepDistiller / mdistiller `vgg.py`, the `vggN_bn` nets): five blocks of 3x3 convs (each
conv + batch norm + ReLU), 2x2 max pooling between blocks 0-1, 1-2, 2-3 (and 3-4 only for 64x64
inputs, as the reference), global average pooling and one linear layer (no FC stack).
VGG13 (teacher, 9.46M parameters with 100 classes) and VGG8 (student, 3.96M) are the benchmark's.

Layout: the stem is block 0; stage k (k = 0..3) is the pooling before block k+1, its convs
(`stages.k.convs`, the reference's `block{k+1}`) and its last activation `stages.k.relu`, so the
stage outputs are the reference's features f1..f4 and `stages.k.relu:input` its pre-ReLU ones.
"""

from __future__ import annotations

import torch
from torch import nn

from kdexp.models import benchmark_layout as layout
from kdexp.models.staged import StagedNet

# Convs per block, by depth (the reference's configurations S, A, B, D, E).
BLOCKS = {8: [1, 1, 1, 1, 1], 11: [1, 1, 2, 2, 2], 13: [2, 2, 2, 2, 2], 16: [2, 2, 3, 3, 3], 19: [2, 2, 4, 4, 4]}
WIDTHS = [64, 128, 256, 512, 512]


def _convs(cin: int, cout: int, count: int) -> nn.Sequential:
    """`count` conv + bn (+ relu between them); the block's last ReLU is the stage's `relu`."""
    layers: list[nn.Module] = []
    for i in range(count):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout)]
        if i < count - 1:
            layers.append(nn.ReLU(inplace=True))
        cin = cout
    return nn.Sequential(*layers)


class VGGStage(nn.Module):
    """relu(convs(pool(x)))."""

    def __init__(self, pool: nn.Module, convs: nn.Sequential):
        super().__init__()
        self.pool = pool
        self.convs = convs
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.convs(self.pool(x)))


def vgg(depth: int, input_shape: tuple[int, ...], num_classes: int) -> StagedNet:
    counts = BLOCKS[depth]
    stem = VGGStage(nn.Identity(), _convs(input_shape[0], WIDTHS[0], counts[0]))
    stages = []
    for k in range(1, 5):
        pooled = k < 4 or input_shape[1] == 64  # the reference pools before block 4 on 64x64 inputs only
        pool = nn.MaxPool2d(2, 2) if pooled else nn.Identity()
        stages.append(VGGStage(pool, _convs(WIDTHS[k - 1], WIDTHS[k], counts[k])))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(WIDTHS[-1], num_classes))
    net = StagedNet(stages, head, stem=stem)
    for m in net.modules():  # as the reference
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return net


def build(cfg, input_shape: tuple[int, ...], num_classes: int) -> StagedNet:
    return vgg(cfg.depth, tuple(input_shape), num_classes)


def describe(cfg) -> str:
    return f"vgg{cfg.depth}"


def from_benchmark_layout(state: dict, model: StagedNet) -> dict | None:
    """RepDistiller's names (`block0..4.i`, `classifier`) → this module's; None when `state` is
    not in that layout."""
    if not layout.is_benchmark(state, "block0.0.weight", "classifier.weight"):
        return None
    rules = [("block0", "stem.convs")] + [(f"block{k}", f"stages.{k - 1}.convs") for k in range(1, 5)]
    rules.append(("classifier", f"head.{layout.linear_index(model.head)}"))
    return layout.rename(state, rules)
