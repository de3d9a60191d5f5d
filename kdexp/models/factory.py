"""Model builders: `build(cfg, ...)` finds the family by `cfg.name` (MLP and CNN here, CIFAR ResNets
in `resnets.py`, the other CIFAR-100 benchmark nets in `wrn.py`, `vgg.py`, `resnet_bottleneck.py`,
`mobilenetv2.py`, `shufflenet.py`, torchvision models in `tv_models.py`), and multi-exit nets for
self-distillation.
Every model is a `StagedNet` (`staged.py`): a sequence of `stages` followed by a `head`, so that any
of them can be cut into exits without knowing its architecture."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from kdexp.models import mobilenetv2, resnet_bottleneck, resnets, shufflenet, vgg, wrn
from kdexp.models import tv_models
from kdexp.config.checks import ConfigError
from kdexp.models.staged import StagedNet

__all__ = ["BENCHMARK_LAYOUTS", "BUILDERS", "DESCRIBERS", "ExitHead", "MultiExit", "StagedNet", "build", "count_params",
           "describe", "from_benchmark_layout", "multi_exit", "pooled"]


def _mlp(cfg, input_shape: tuple[int, ...], num_classes: int) -> StagedNet:
    width = 1
    for d in input_shape:
        width *= d
    stages: list[nn.Module] = []
    for hidden in cfg.hidden:
        layers: list[nn.Module] = [nn.Linear(width, hidden), nn.ReLU()]
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        stages.append(nn.Sequential(*layers))
        width = hidden
    return StagedNet(stages, nn.Linear(width, num_classes), stem=nn.Flatten())


def _cnn(cfg, input_shape: tuple[int, ...], num_classes: int) -> StagedNet:
    channels, height, width = input_shape
    stages: list[nn.Module] = []
    for out in cfg.channels:
        layers: list[nn.Module] = [nn.Conv2d(channels, out, 3, padding=1, bias=not cfg.batch_norm)]
        if cfg.batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        stages.append(nn.Sequential(*layers))
        channels, height, width = out, height // 2, width // 2
    if height < 1 or width < 1:
        raise ConfigError(
            f"model.channels={list(cfg.channels)} is not allowed for {tuple(input_shape)} inputs: "
            f"each block halves the image; use at most {max(1, min(input_shape[1:]).bit_length() - 1)} blocks"
        )
    head = nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, cfg.fc), nn.ReLU(),
                         nn.Dropout(cfg.dropout), nn.Linear(cfg.fc, num_classes))
    return StagedNet(stages, head)


# Model families by `model.name`: a builder of the net, and a short name for tags and tables.
BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp, "cnn": _cnn, "resnet": resnets.build, "wrn": wrn.build, "vgg": vgg.build,
    "resnet_bottleneck": resnet_bottleneck.build, "mobilenetv2": mobilenetv2.build,
    "shufflenet_v1": shufflenet.build_v1, "shufflenet_v2": shufflenet.build_v2, "torchvision": tv_models.build}
DESCRIBERS: dict[str, Callable[..., str]] = {
    "resnet": resnets.describe, "wrn": wrn.describe, "vgg": vgg.describe,
    "resnet_bottleneck": resnet_bottleneck.describe, "mobilenetv2": mobilenetv2.describe,
    "shufflenet_v1": shufflenet.describe_v1, "shufflenet_v2": shufflenet.describe_v2,
    "torchvision": tv_models.describe}
# The renaming of a state dict saved by the CIFAR-100 KD benchmark code (RepDistiller, mdistiller),
# in which its published teachers come, to kdexp's module names: `(state, model) -> state | None`.
BENCHMARK_LAYOUTS: dict[str, Callable[..., dict | None]] = {
    "resnet": resnets.from_benchmark_layout, "wrn": wrn.from_benchmark_layout, "vgg": vgg.from_benchmark_layout,
    "resnet_bottleneck": resnet_bottleneck.from_benchmark_layout,
    "mobilenetv2": mobilenetv2.from_benchmark_layout, "shufflenet_v1": shufflenet.from_benchmark_layout,
    "shufflenet_v2": shufflenet.from_benchmark_layout,
    "torchvision": tv_models.from_torchvision_layout}


def build(cfg, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build `cfg.name` with weights drawn from `seed` alone, so equal seeds give equal inits."""
    if cfg.name not in BUILDERS:
        raise ConfigError(f"model.name={cfg.name!r} is not known; allowed: {', '.join(sorted(BUILDERS))}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BUILDERS[cfg.name](cfg, tuple(input_shape), num_classes)


def from_benchmark_layout(state: dict, model: nn.Module, cfg) -> dict | None:
    """`state` renamed from the benchmark code's module layout to `model`'s (built from `cfg`); None
    when the family has no such layout or `state` is not in it."""
    rename = BENCHMARK_LAYOUTS.get(cfg.name)
    return rename(state, model) if rename else None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(cfg) -> str:
    """A short name for tags and tables: `mlp[512,256]`, `cnn[32,64]`, `resnet8x4`."""
    if cfg.name in DESCRIBERS:
        return DESCRIBERS[cfg.name](cfg)
    sizes = cfg.get("hidden", None) or cfg.get("channels", None) or []
    return f"{cfg.name}[{','.join(str(s) for s in sizes)}]"


# --- multi-exit nets for self-distillation ---------------------------------------------


def pooled(h: torch.Tensor) -> torch.Tensor:
    """A stage output as one feature vector per sample: feature maps are globally average-pooled,
    vectors kept as they are, anything else flattened."""
    if h.dim() == 4:
        return h.mean(dim=(2, 3))
    return h.flatten(1)


class ExitHead(nn.Module):
    """An early exit: a small bottleneck from a stage's output to `width` features, then a linear
    classifier. The bottleneck average-pools feature maps to `pool` x `pool` (keeping some layout,
    which global pooling of a shallow stage loses), flattens, and applies one linear layer and ReLU;
    vectors go straight to the linear layer."""

    def __init__(self, shape: tuple[int, ...], width: int, num_classes: int, pool: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        if len(shape) == 3:
            layers.append(nn.AdaptiveAvgPool2d(min(pool, shape[1], shape[2])))
            shape = (shape[0], min(pool, shape[1]), min(pool, shape[2]))
        size = 1
        for d in shape:
            size *= d
        self.bottleneck: nn.Module = nn.Sequential(*layers, nn.Flatten(1), nn.Linear(size, width), nn.ReLU())
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bottleneck(h))


class MultiExit(nn.Module):
    """A `StagedNet` with an exit after each stage: an `ExitHead` after every stage but the last,
    and the net's own head as the deepest exit (so the deepest exit is exactly the original model).

    Each exit's features (for the feature-matching term) are its bottleneck output; the deepest
    exit's are the last stage's output, pooled (`pooled`). Every bottleneck has that width, so the
    shapes match. `outputs(x)` gives (logits, features) of every exit, shallow to deep; `forward`
    the deepest exit's logits; `exit_net(i)` exit i (1-based) as a standalone `StagedNet` sharing
    these weights, whose parameter count is the model up to that exit."""

    def __init__(self, net: StagedNet, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        if not isinstance(net, StagedNet):
            raise ConfigError(f"a multi-exit net needs a StagedNet, got {type(net).__name__}")
        if len(net.stages) < 2:
            raise ConfigError(
                f"loss=self needs a model with at least two stages (one exit per stage); this one has "
                f"{len(net.stages)}: give it more hidden layers / conv blocks, or use loss.mode=born_again")
        self.net = net
        shapes = self._stage_shapes(net, input_shape)
        width = int(pooled(torch.zeros((1, *shapes[-1]))).shape[1])
        self.exits = nn.ModuleList(ExitHead(shape, width, num_classes) for shape in shapes[:-1])

    @staticmethod
    def _stage_shapes(net: StagedNet, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        was_training = net.training
        device = next(net.parameters()).device
        net.eval()
        with torch.no_grad():
            shapes = [tuple(h.shape[1:]) for h in net.features(torch.zeros((1, *input_shape), device=device))]
        net.train(was_training)
        return shapes

    @property
    def num_exits(self) -> int:
        return len(self.exits) + 1

    def outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, feats = [], []
        h = self.net.stem(x)
        for i, stage in enumerate(self.net.stages):
            h = stage(h)
            if i < len(self.exits):
                f = self.exits[i].bottleneck(h)
                feats.append(f)
                logits.append(self.exits[i].classifier(f))
        feats.append(pooled(h))
        logits.append(self.net.head(h))
        return logits, feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def exit_net(self, i: int) -> StagedNet:
        if not 1 <= i <= self.num_exits:
            raise IndexError(f"exit {i} of {self.num_exits}")
        if i == self.num_exits:
            return self.net
        return StagedNet(list(self.net.stages[:i]), self.exits[i - 1], stem=self.net.stem)


def multi_exit(net: StagedNet, input_shape: tuple[int, ...], num_classes: int, seed: int) -> MultiExit:
    """`net` made multi-exit, the exit heads' weights drawn from `seed` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MultiExit(net, tuple(input_shape), num_classes).to(next(net.parameters()).device)
