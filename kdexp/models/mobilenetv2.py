"""MobileNetV2 for CIFAR (Sandler et al., CVPR 2018) as the CIFAR-100 KD benchmark builds it
(RepDistiller / mdistiller `mobilenetv2.py`, `mobile_half`: expansion 6, width multiplier 0.5;
0.81M parameters with 100 classes): a strided 3x3 stem, seven groups of inverted residual blocks
(t, c, n, s) = (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
(6, 160, 3, 2), (6, 320, 1, 1) with c scaled by the width, a 1x1 conv to 1280, global average
pooling and one linear layer.

Stages are where the reference takes its features (f1..f4): groups 0-1, group 2, groups 3-4 and
groups 5-6, so `stages.1` is its f2 (FitNets' hint layer). An inverted residual block ends in a
linear bottleneck (no activation), so its output is already its pre-activation feature (what OFD
takes from `get_bn_before_relu`: the block's last batch norm).
"""

from __future__ import annotations

import torch
from torch import nn

from kdexp.models import benchmark_layout as layout
from kdexp.models.staged import StagedNet

SETTINGS = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
            (None, 160, 3, 2), (None, 320, 1, 1)]  # None: the model's expansion
STAGES = [[0, 1], [2], [3, 4], [5, 6]]  # groups per stage
LAST = 1280


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand → bn → relu → 3x3 depthwise → bn → relu → 1x1 project → bn, plus x when the
    shape is kept. `conv` keeps the reference's indices (0, 1, 3, 4, 6, 7 hold weights)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def mobilenetv2(expansion: int, width: float, in_channels: int, num_classes: int) -> StagedNet:
    cin = int(32 * width)
    stem = _conv_bn_relu(in_channels, cin, 3, stride=2)
    groups: list[nn.Module] = []
    for t, c, n, s in SETTINGS:
        cout = int(c * width)
        blocks = []
        for stride in [s] + [1] * (n - 1):
            blocks.append(InvertedResidual(cin, cout, stride, expansion if t is None else t))
            cin = cout
        groups.append(nn.Sequential(*blocks))
    stages = [nn.Sequential(*[groups[g] for g in members]) for members in STAGES]
    last = int(LAST * width) if width > 1.0 else LAST
    head = nn.Sequential(*_conv_bn_relu(cin, last, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                         nn.Linear(last, num_classes))
    net = StagedNet(stages, head, stem=stem)
    for m in net.modules():  # as the reference
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return net


def build(cfg, input_shape: tuple[int, ...], num_classes: int) -> StagedNet:
    return mobilenetv2(cfg.expansion, cfg.width, input_shape[0], num_classes)


def describe(cfg) -> str:
    return "mobilenetv2" if (cfg.expansion, cfg.width) == (6, 0.5) else f"mobilenetv2[t{cfg.expansion},w{cfg.width}]"


def from_benchmark_layout(state: dict, model: StagedNet) -> dict | None:
    """RepDistiller's names (`conv1.i`, `blocks.g.i`, `conv2.i`, `classifier.0`) → this module's;
    None when `state` is not in that layout."""
    if not layout.is_benchmark(state, "conv1.0.weight", "blocks.0.0.conv.0.weight", "classifier.0.weight"):
        return None
    rules = [("conv1", "stem"), ("conv2", "head"), ("classifier.0", f"head.{layout.linear_index(model.head)}")]
    for k, members in enumerate(STAGES):
        rules += [(f"blocks.{g}", f"stages.{k}.{j}") for j, g in enumerate(members)]
    return layout.rename(state, rules)
