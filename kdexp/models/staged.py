"""The shape every kdexp model has: a stem, a sequence of stages, a head.

Model families (`models.py` for MLPs and CNNs, `resnets.py`, `tv_models.py`) build a `StagedNet`,
so that any model can be cut into exits for self-distillation without knowing its architecture.
This module depends on torch alone, so that the families can import it and `models.py` can import
the families without a cycle."""

from __future__ import annotations

import torch
from torch import nn


class StagedNet(nn.Module):
    """`head(stage_k(... stage_1(x)))`; `features(x)` returns every stage's output."""

    def __init__(self, stages: list[nn.Module], head: nn.Module, stem: nn.Module | None = None):
        super().__init__()
        self.stem = stem or nn.Identity()
        self.stages = nn.ModuleList(stages)
        self.head = head
        # Each stage's pre-ReLU feature → the batch norm before that ReLU, for a net whose stages
        # do not end in their own ReLU (pre-activation blocks); empty: found from the stages
        # (distill/features.py `stage_preact_names`).
        self.preact_bns: dict[str, str] = {}

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
