"""Model builders. Every model is a sequence of `stages` followed by a `head`, so that any
of them can be cut into exits for self-distillation without knowing its architecture."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from kdexp.config import ConfigError


class StagedNet(nn.Module):
    """`head(stage_k(... stage_1(x)))`; `features(x)` returns every stage's output."""

    def __init__(self, stages: list[nn.Module], head: nn.Module, stem: nn.Module | None = None):
        super().__init__()
        self.stem = stem or nn.Identity()
        self.stages = nn.ModuleList(stages)
        self.head = head

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], self.stem(x)
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
        return self.head(h)


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


BUILDERS: dict[str, Callable[..., nn.Module]] = {"mlp": _mlp, "cnn": _cnn}


def build(cfg, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build `cfg.name` with weights drawn from `seed` alone, so equal seeds give equal inits."""
    if cfg.name not in BUILDERS:
        raise ConfigError(f"model.name={cfg.name!r} is not known; allowed: {', '.join(sorted(BUILDERS))}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BUILDERS[cfg.name](cfg, tuple(input_shape), num_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(cfg) -> str:
    """A short name for tags and tables: `mlp[512,256]`, `cnn[32,64]`."""
    sizes = cfg.get("hidden", None) or cfg.get("channels", None) or []
    return f"{cfg.name}[{','.join(str(s) for s in sizes)}]"
