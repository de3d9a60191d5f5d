"""Wide ResNets (Zagoruyko & Komodakis, BMVC 2016) as the CIFAR-100 KD benchmark builds them
(RepDistiller / mdistiller `wrn.py`): WRN-d-k has a 3x3 stem conv of 16 channels, three stages of
(d - 4) / 6 pre-activation blocks of widths 16k, 32k, 64k (stride 1, 2, 2), then batch norm, ReLU,
global average pooling and one linear layer. The benchmark's nets: WRN-40-2 (teacher, 2.25M
parameters with 100 classes), WRN-16-2 (0.70M) and WRN-40-1 (0.57M).

The blocks are pre-activation (bn → relu → conv → bn → relu → conv, plus the shortcut): a block
ends in a conv, not an activation, so unlike kdexp's other blocks it has no `relu` module at its
end (its activations are `relu1` and `relu2`, as the reference names them), and each stage's
output is itself pre-ReLU: the reference's features f1..f3 (FitNets, AT) are the stage outputs, and
its pre-ReLU features for OFD (`preact=True`, `get_bn_before_relu`) are those outputs through the
next batch norm, i.e. the outputs of `stages.1.0.bn1`, `stages.2.0.bn1` and `head.0`.
"""

from __future__ import annotations

import torch
from torch import nn

from kdexp.models import benchmark_layout as layout
from kdexp.models.staged import StagedNet


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """x + conv2(relu2(bn2(conv1(relu1(bn1(x)))))). When the width changes, the shortcut is a
    strided 1x1 conv of the *activated* input (as in the reference); otherwise the identity of x."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.equal = cin == cout
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        return out + (x if self.equal else self.shortcut(act))


def blocks_per_stage(depth: int) -> int:
    """depth = 6n + 4, as the WRN paper counts its layers (n blocks per stage)."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
    return (depth - 4) // 6


def wide_resnet(depth: int, widen: int, in_channels: int, num_classes: int) -> StagedNet:
    n = blocks_per_stage(depth)
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    stages: list[nn.Module] = []
    cin = widths[0]
    for i, cout in enumerate(widths[1:]):
        stride = 1 if i == 0 else 2
        stages.append(nn.Sequential(PreActBlock(cin, cout, stride), *[PreActBlock(cout, cout) for _ in range(n - 1)]))
        cin = cout
    head = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                         nn.Linear(cin, num_classes))
    net = StagedNet(stages, head, stem=nn.Sequential(_conv3x3(in_channels, widths[0])))
    # The reference's pre-ReLU features (`preact=True`): each stage's output through the next batch
    # norm, i.e. the input of the next stage's first `relu1`, and of the head's ReLU for the last.
    net.preact_bns = {f"stages.{k}.0.relu1:input": f"stages.{k}.0.bn1" for k in (1, 2)} | {"head.1:input": "head.0"}
    for m in net.modules():  # as the reference: He init (fan out) for convs, unit batch norms, zero biases
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return net


def build(cfg, input_shape: tuple[int, ...], num_classes: int) -> StagedNet:
    return wide_resnet(cfg.depth, cfg.widen, input_shape[0], num_classes)


def describe(cfg) -> str:
    return f"wrn{cfg.depth}_{cfg.widen}"


def from_benchmark_layout(state: dict, model: StagedNet) -> dict | None:
    """RepDistiller's names (`conv1`, `block{1,2,3}.layer.i.{bn1,conv1,bn2,conv2,convShortcut}`,
    `bn1`, `fc`) → this module's; None when `state` is not in that layout."""
    if not layout.is_benchmark(state, "conv1.weight", "block1.layer.0.conv1.weight", "fc.weight"):
        return None
    rules = [(f"block{k}.layer", f"stages.{k - 1}") for k in (1, 2, 3)]
    rules += [("conv1", "stem.0"), ("bn1", "head.0"), ("fc", f"head.{layout.linear_index(model.head)}")]
    return {k.replace(".convShortcut.", ".shortcut."): v for k, v in layout.rename(state, rules).items()}
