"""ShuffleNetV1 (Zhang et al., CVPR 2018) and ShuffleNetV2 (Ma et al., ECCV 2018) for CIFAR, as the
CIFAR-100 KD benchmark builds them (RepDistiller / mdistiller `ShuffleNetv1.py`, `ShuffleNetv2.py`):
a 1x1 stem conv to 24 channels (no stride, no pooling: CIFAR images are 32x32), three stages that
each halve the resolution, global average pooling and one linear layer.

- V1 (`ShuffleV1`, 0.95M parameters with 100 classes): groups 3, stages of 4, 8, 4 bottlenecks
  of widths 240, 480, 960; a strided block concatenates its branch with a 3x3 average-pooled input.
- V2 (`ShuffleV2`, net size 1: 1.36M): stages of a down-sampling block and 3, 7, 3 basic blocks of
  widths 116, 232, 464, then a 1x1 conv to 1024 before the pooling.

Each block's last activation is its own `relu`, whose input is the reference's pre-ReLU feature
(`preact`): V1 on the sum or concatenation; V2's basic block on the concatenation of its halves,
before the shuffle (the reference's `preact`, also unshuffled).
"""

from __future__ import annotations

import torch
from torch import nn

from kdexp.models import benchmark_layout as layout
from kdexp.models.staged import StagedNet

V1 = {"widths": [240, 480, 960], "blocks": [4, 8, 4], "groups": 3}
V2 = {0.5: ([48, 96, 192, 1024], [3, 7, 3]), 1.0: ([116, 232, 464, 1024], [3, 7, 3]),
      1.5: ([176, 352, 704, 1024], [3, 7, 3]), 2.0: ([224, 488, 976, 2048], [3, 7, 3])}
STEM = 24


def shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Channel shuffle: [N, g·c, H, W] → interleave the g groups' channels."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _bn_conv(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)


class V1Block(nn.Module):
    """Grouped 1x1 → shuffle → depthwise 3x3 (strided) → grouped 1x1; added to x, or concatenated
    with avg-pooled x when strided (the block then adds `cout - cin` channels); relu last."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        mid = cout // 4
        self.stride, self.first_groups = stride, 1 if cin == STEM else groups
        self.conv1, self.bn1 = _bn_conv(cin, mid, groups=self.first_groups)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _bn_conv(mid, mid, 3, stride, groups=mid)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3, self.bn3 = _bn_conv(mid, cout, groups=groups)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = shuffle(self.relu1(self.bn1(self.conv1(x))), self.first_groups)
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        return self.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class V2Block(nn.Module):
    """Split the channels in half; the right half goes 1x1 → depthwise 3x3 → 1x1; concatenate with
    the left half, relu, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1, self.bn1 = _bn_conv(half, half)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _bn_conv(half, half, 3, groups=half)
        self.conv3, self.bn3 = _bn_conv(half, half)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        left, right = x[:, :c], x[:, c:]
        right = self.bn3(self.conv3(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(right)))))))
        # The reference applies the ReLU to the right half only; the left half is a block's output
        # (every stage input is post-ReLU), so it is >= 0 and the ReLU of the concatenation is the
        # same values, with the reference's `preact` (left + pre-ReLU right) as `relu`'s input.
        return shuffle(self.relu(torch.cat([left, right], 1)), 2)


class V2Down(nn.Module):
    """Both branches strided: left depthwise 3x3 → 1x1; right 1x1 → depthwise 3x3 → 1x1 (relu
    last); concatenated and shuffled."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = _bn_conv(cin, cin, 3, 2, groups=cin)
        self.conv2, self.bn2 = _bn_conv(cin, mid)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3, self.bn3 = _bn_conv(cin, mid)
        self.relu3 = nn.ReLU(inplace=True)
        self.conv4, self.bn4 = _bn_conv(mid, mid, 3, 2, groups=mid)
        self.conv5, self.bn5 = _bn_conv(mid, mid)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.relu2(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(self.relu3(self.bn3(self.conv3(x)))))
        return shuffle(torch.cat([left, self.relu(self.bn5(self.conv5(right)))], 1), 2)


def _stem(in_channels: int) -> nn.Sequential:
    return nn.Sequential(*_bn_conv(in_channels, STEM), nn.ReLU(inplace=True))


def shufflenet_v1(in_channels: int, num_classes: int) -> StagedNet:
    stages, cin = [], STEM
    for width, count in zip(V1["widths"], V1["blocks"]):
        blocks = [V1Block(cin, width - cin, 2, V1["groups"])]  # concatenation adds the input's channels back
        blocks += [V1Block(width, width, 1, V1["groups"]) for _ in range(count - 1)]
        stages.append(nn.Sequential(*blocks))
        cin = width
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cin, num_classes))
    return StagedNet(stages, head, stem=_stem(in_channels))  # PyTorch's default init, as the reference


def shufflenet_v2(size: float, in_channels: int, num_classes: int) -> StagedNet:
    widths, counts = V2[float(size)]
    stages, cin = [], STEM
    for width, count in zip(widths[:3], counts):
        stages.append(nn.Sequential(V2Down(cin, width), *[V2Block(width) for _ in range(count)]))
        cin = width
    head = nn.Sequential(*_bn_conv(cin, widths[3]), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(1), nn.Linear(widths[3], num_classes))
    return StagedNet(stages, head, stem=_stem(in_channels))  # PyTorch's default init, as the reference


def build_v1(cfg, input_shape: tuple[int, ...], num_classes: int) -> StagedNet:
    return shufflenet_v1(input_shape[0], num_classes)


def build_v2(cfg, input_shape: tuple[int, ...], num_classes: int) -> StagedNet:
    return shufflenet_v2(cfg.size, input_shape[0], num_classes)


def describe_v1(cfg) -> str:
    return "shufflenet_v1"


def describe_v2(cfg) -> str:
    return "shufflenet_v2" if float(cfg.size) == 1.0 else f"shufflenet_v2[{cfg.size}x]"


def from_benchmark_layout(state: dict, model: StagedNet) -> dict | None:
    """RepDistiller's names (`conv1`, `bn1`, `layer1..3.i`, V2's `conv2`, `bn2`, `linear`) → this
    module's; None when `state` is not in that layout. A V1 block's `shortcut` holds no weights."""
    if not layout.is_benchmark(state, "conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "linear.weight"):
        return None
    rules = [("conv1", "stem.0"), ("bn1", "stem.1"), ("conv2", "head.0"), ("bn2", "head.1"),
             ("linear", f"head.{layout.linear_index(model.head)}")]
    rules += [(f"layer{k}", f"stages.{k - 1}") for k in (1, 2, 3)]
    return layout.rename(state, rules)
