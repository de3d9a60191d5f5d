"""CIFAR-style ResNets (He et al. 2016, section 4.2) as used by the CIFAR-100 KD benchmark.

The layout follows the CRD / mdistiller `resnet.py` (HobbitLong/RepDistiller, megvii-research/
mdistiller) so that parameter counts and published accuracies compare: a 3x3 stem conv of width
`widths[0]`, three stages of (depth - 2) / 6 BasicBlocks of widths `widths[1:]` (stride 1, 2, 2),
1x1-conv + batch-norm shortcuts wherever the shape changes, global average pooling and one linear
layer. resnet8/14/20/32/56/110 use widths [16, 16, 32, 64]; the wide resnet8x4/resnet32x4 use
[32, 64, 128, 256]. The stem takes the data set's channels and the pooling is adaptive, so the
same nets run on 1x28x28 MNIST-like images as on 3x32x32 CIFAR ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdexp.models.staged import StagedNet

NARROW = [16, 16, 32, 64]
WIDE = [32, 64, 128, 256]  # the "x4" nets of the benchmark


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); the shortcut is a strided 1x1 conv + bn when
    the width or resolution changes, the identity otherwise. The last activation is its own module
    `relu` (not in place), so the block's pre-ReLU output (the reference's `preact`, what OFD
    distils) is the input of `<block>.relu`; the ReLUs hold no weights, so state dicts are unchanged."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def blocks_per_stage(depth: int) -> int:
    """depth = 6n + 2 (stem conv + 3 stages x n blocks x 2 convs + the linear layer)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
    return (depth - 2) // 6


def cifar_resnet(depth: int, widths: list[int], in_channels: int, num_classes: int,
                 dropout: float = 0.0) -> StagedNet:
    n = blocks_per_stage(depth)
    stem = nn.Sequential(_conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
    stages: list[nn.Module] = []
    cin = widths[0]
    for i, cout in enumerate(widths[1:]):
        stride = 1 if i == 0 else 2
        blocks = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout) for _ in range(n - 1)]
        stages.append(nn.Sequential(*blocks))
        cin = cout
    head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    if dropout:
        head.append(nn.Dropout(dropout))
    head.append(nn.Linear(cin, num_classes))
    return reference_init(StagedNet(stages, nn.Sequential(*head), stem=stem))


def reference_init(net: nn.Module) -> nn.Module:
    """The CIFAR ResNets' init in the reference code (basic and bottleneck blocks alike): He init
    (fan out) for convs, unit batch norms; linear layers keep torch's default."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


def build(cfg, input_shape: tuple[int, ...], num_classes: int) -> StagedNet:
    return cifar_resnet(cfg.depth, list(cfg.widths), input_shape[0], num_classes, cfg.dropout)


def describe(cfg) -> str:
    """`resnet20`, `resnet8x4`, or `resnet20[8,8,16,32]` for other widths."""
    widths = list(cfg.widths)
    if widths == NARROW:
        return f"resnet{cfg.depth}"
    if widths == WIDE:
        return f"resnet{cfg.depth}x4"
    return f"resnet{cfg.depth}[{','.join(str(w) for w in widths)}]"


def from_benchmark_layout(state: dict, model: StagedNet) -> dict | None:
    """`state` renamed from the module layout of the CIFAR-100 KD benchmark code (`conv1`, `bn1`,
    `layer1.0.conv1`, `layer1.0.downsample.0`, ..., `fc`), in which its published teachers are
    saved, to this module's (`stem.0`, `stem.1`, `stages.0.0.conv1`, `stages.0.0.shortcut.0`, ...,
    the head's linear layer); None when `state` is not in that layout."""
    if "conv1.weight" not in state or "fc.weight" not in state:
        return None
    linear = next(name for name, m in model.head.named_children() if isinstance(m, nn.Linear))
    top = {"conv1": "stem.0", "bn1": "stem.1", "fc": f"head.{linear}"}
    out = {}
    for key, value in state.items():
        first, _, rest = key.partition(".")
        if first in top:
            out[f"{top[first]}.{rest}"] = value
        elif first.startswith("layer") and first[5:].isdigit():
            out[f"stages.{int(first[5:]) - 1}.{rest.replace('.downsample.', '.shortcut.')}"] = value
        else:
            out[key] = value  # left as it is: the key check names it as unexpected
    return out
