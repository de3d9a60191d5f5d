"""ResNet-50 for CIFAR (He et al. 2016, bottleneck blocks) as the CIFAR-100 KD benchmark builds it
(RepDistiller / mdistiller `resnetv2.py`, `ResNet50`): a 3x3 stem conv of 64 channels (no max
pooling: CIFAR images are 32x32), four stages of [3, 4, 6, 3] bottleneck blocks of widths 64, 128,
256, 512 (x4 out, stride 1, 2, 2, 2), 1x1-conv + batch-norm shortcuts where the shape changes,
global average pooling and one linear layer: 23.71M parameters with 100 classes.

Each block's last activation is its own `relu`, so `stages.k.<i>.relu:input` is the reference's
pre-ReLU feature (`preact`) of block i.
"""

from __future__ import annotations

import torch
from torch import nn

from kdexp.models import benchmark_layout as layout
from kdexp.models.resnets import reference_init
from kdexp.models.staged import StagedNet

EXPANSION = 4
WIDTHS = [64, 128, 256, 512]


class Bottleneck(nn.Module):
    """relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x)): 1x1 → 3x3 (strided) → 1x1 x4."""

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * EXPANSION
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def resnet_bottleneck(blocks: list[int], in_channels: int, num_classes: int) -> StagedNet:
    stem = nn.Sequential(nn.Conv2d(in_channels, WIDTHS[0], 3, padding=1, bias=False), nn.BatchNorm2d(WIDTHS[0]),
                         nn.ReLU(inplace=True))
    stages: list[nn.Module] = []
    cin = WIDTHS[0]
    for i, (planes, count) in enumerate(zip(WIDTHS, blocks)):
        stride = 1 if i == 0 else 2
        layers = [Bottleneck(cin, planes, stride)] + [Bottleneck(planes * EXPANSION, planes) for _ in range(count - 1)]
        stages.append(nn.Sequential(*layers))
        cin = planes * EXPANSION
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cin, num_classes))
    return reference_init(StagedNet(stages, head, stem=stem))


def build(cfg, input_shape: tuple[int, ...], num_classes: int) -> StagedNet:
    return resnet_bottleneck(list(cfg.blocks), input_shape[0], num_classes)


def describe(cfg) -> str:
    depth = 3 * sum(cfg.blocks) + 2
    blocks = list(cfg.blocks)
    return f"resnet{depth}" if blocks == [3, 4, 6, 3] else f"resnet_bottleneck[{','.join(map(str, blocks))}]"


def from_benchmark_layout(state: dict, model: StagedNet) -> dict | None:
    """RepDistiller's names (`conv1`, `bn1`, `layer1..4.i`, `linear`) → this module's; None when
    `state` is not in that layout."""
    if not layout.is_benchmark(state, "conv1.weight", "layer1.0.conv3.weight", "linear.weight"):
        return None
    rules = [("conv1", "stem.0"), ("bn1", "stem.1"), ("linear", f"head.{layout.linear_index(model.head)}")]
    rules += [(f"layer{k}", f"stages.{k - 1}") for k in range(1, len(model.stages) + 1)]
    return layout.rename(state, rules)
