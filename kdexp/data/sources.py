"""Which source a `data` section opens: in-memory tensors, or (for data that does not fit) a stream."""

from __future__ import annotations

import torch

from kdexp.data.memory import MemorySource, load
from kdexp.data.source import Shard, Source


def open_source(cfg, device: torch.device, shard: Shard = Shard()) -> Source:
    """The data set named by `cfg.name` as a source for this process."""
    return MemorySource(load(cfg).to(device), cfg, device, shard)
