"""What a family hands the training loop (kdexp/run/loop.py), and what the loop hands back.

A `Phase`: the models trained together (one optimiser over all of them, and over the trainable
`parts` of its methods: a connector, a temperature), a function from a batch to named loss terms
(the total under `loss`), and a function from inputs to the logits of every model judged at
evaluation. A `History`: the per-epoch values of every metric the phase logged. A `Clock`: where
the loop is, for methods with a schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
PredictFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class Clock:
    """Where the loop is, for loss terms with a schedule: epoch (1-based), step (1-based, within
    the epoch), the phase's epochs and steps per epoch."""

    epoch: int = 1
    step: int = 1
    epochs: int = 1
    steps: int = 1


@dataclass
class Phase:
    name: str
    models: dict[str, nn.Module]
    # A batch (x, y, idx) → named loss terms, the total under `loss`.
    step_loss: LossFn
    predict: PredictFn
    epochs: int
    seed: int
    augment: bool = False
    # Trainable parts of the loss terms (a FitNets connector, CTKD's temperature): optimised and
    # checkpointed with the models, never judged.
    parts: dict[str, nn.Module] = field(default_factory=dict)
    clock: Clock = field(default_factory=Clock)


@dataclass
class History:
    """Per-epoch values of every metric the phase logged, and the last epoch's accuracies."""

    metrics: dict[str, list[float]] = field(default_factory=dict)

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.metrics.setdefault(key, []).append(value)

    def last(self, key: str) -> float:
        return self.metrics[key][-1]

    def epoch_selected(self) -> dict[str, float]:
        """Besides the last epoch's accuracy (what kdexp reports), for every model `m` evaluated:
        `m_best_acc`, the best epoch's test accuracy (optimistic: the epoch is chosen on the test
        set), and with a validation split `m_val_selected_acc`, the test accuracy at the epoch of
        best validation accuracy (the first such epoch)."""
        out = {}
        for key, test in self.metrics.items():
            if not key.endswith("/test_acc") or not test:
                continue
            name = key.removesuffix("/test_acc")
            out[f"{name}_best_acc"] = max(test)
            val = self.metrics.get(f"{name}/val_acc")
            if val and len(val) == len(test):
                out[f"{name}_val_selected_acc"] = test[val.index(max(val))]
        return out
