"""The batch source: the one way the loop, the families and the model store read data.

A `Source` is one data set as one run (one process of it) sees it: its train split and its held-out
splits (`test`, and `val` with `data.val_size`). Two kinds implement it and give the same batches,
so that no family or method knows which one runs:

- in-memory tensors (kdexp/data/memory.py): MNIST, CIFAR, a small folder; one index op per step;
- a stream of files read by DataLoader workers (kdexp/data/folder.py): data that does not fit.

Batches are `(x, y, idx)`: `x` normalised float `(B, C, H, W)` on the run's device, `y` the labels,
`idx` the samples' indices in their split (what cached per-sample data is looked up by: a frozen
teacher's logits, CRD's memory bank).

**`data.batch_size` is global.** Each epoch's order is one permutation of the train split drawn from
the phase's generator, which every process seeds alike; it is cut into global batches, and a
`Shard` takes its process's rows of each (`rank::world`). One process (`Shard()`) sees whole
batches, so a job computes the same thing on any number of processes up to summation order.
Held-out splits are read in index order, cut the same way; the caller reduces counts over processes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator

import torch

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Shard:
    """This process's part of every global batch: rows `rank`, `rank + world`, ..."""

    rank: int = 0
    world: int = 1

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.world == 1 else rows[self.rank::self.world]


def epoch_order(size: int, generator: torch.Generator) -> torch.Tensor:
    """The epoch's permutation of `size` samples, drawn on the CPU generator (the same on every
    process and device: a resumed run, restoring the generator, repeats it)."""
    return torch.randperm(size, generator=generator)


def global_batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


class Source(ABC):
    """One data set as this process reads it; `cfg` is the `data` section, `device` where batches go."""

    def __init__(self, cfg, device: torch.device, shard: Shard = Shard()):
        self.cfg = cfg
        self.device = device
        self.shard = shard

    name: str
    num_classes: int
    input_shape: tuple[int, ...]

    @property
    @abstractmethod
    def eval_splits(self) -> tuple[str, ...]:
        """The held-out splits there are, in the order they are reported: ("test",) or ("test", "val")."""

    @abstractmethod
    def size(self, split: str) -> int:
        """Samples in `split` over all processes (what epoch means and accuracies divide by)."""

    @abstractmethod
    def train_batches(self, generator: torch.Generator, augment: bool) -> Iterator[Batch]:
        """One epoch of shuffled training batches (this process's rows of each global batch);
        `augment` applies the data set's training augmentation."""

    @abstractmethod
    def eval_batches(self, split: str) -> Iterator[Batch]:
        """`split` in index order, unaugmented, `data.eval_batch_size` at a time (this process's rows)."""

    @abstractmethod
    def sample(self, n: int = 2, split: str = "train") -> torch.Tensor:
        """The first `n` inputs of `split`, unaugmented, on the device: probes and model signatures."""

