"""Which source a `data` section opens: in-memory tensors, or (for data that does not fit) a stream.

The named data sets (MNIST, CIFAR, ...) are in-memory tensors. An image folder (`data.name`
imagefolder, imagenet, tiny_imagenet) is decoded once into in-memory tensors with
`data.in_memory=true`, streamed with `false`, and with `auto` kept in memory when its decoded
float32 tensors fit `data.memory_budget_mb` and its augmentation is one the in-memory source
applies to tensors (`shift`, `crop_flip`; `resized_crop_flip` crops the original files, so it streams).
"""

from __future__ import annotations

import torch

from kdexp.config.checks import ConfigError
from kdexp.data import folder_layout
from kdexp.data.expected import FOLDER_SETS
from kdexp.data.folder import FolderSource, check_files
from kdexp.data import memory
from kdexp.data.memory import LOADERS, Dataset, MemorySource, Split
from kdexp.data.source import Shard, Source

STREAM_ONLY_AUGMENTATION = "resized_crop_flip"


def open_source(cfg, device: torch.device, shard: Shard = Shard()) -> Source:
    """The data set named by `cfg.name` as a source for this process."""
    if cfg.name not in FOLDER_SETS and cfg.name not in LOADERS:
        raise ConfigError(f"data.name={cfg.name!r} is not known; allowed: {', '.join(sorted([*LOADERS, *FOLDER_SETS]))}")
    if cfg.name not in FOLDER_SETS:
        if cfg.augmentation == STREAM_ONLY_AUGMENTATION:
            raise ConfigError(f"data.augmentation={STREAM_ONLY_AUGMENTATION} is for image folders "
                              f"(data.name={'|'.join(FOLDER_SETS)}); allowed for {cfg.name}: shift, crop_flip")
        return MemorySource(memory.load(cfg).to(device), cfg, device, shard)
    return open_folder(cfg, device, shard)


def decoded_mb(cfg, images: int) -> float:
    """MB of float32 tensors `images` decoded images take in memory."""
    return images * cfg.channels * cfg.image_size ** 2 * 4 / 2**20


def in_memory(cfg, images: int) -> bool:
    """Whether the folder is decoded into memory (`data.in_memory`, the module docstring)."""
    choice = str(cfg.in_memory).lower()
    if choice == "true" and cfg.augmentation == STREAM_ONLY_AUGMENTATION:
        raise ConfigError(f"data.in_memory=true cannot apply data.augmentation={STREAM_ONLY_AUGMENTATION} "
                          f"(it crops the original files); set data.in_memory=false (stream) or "
                          f"data.augmentation=crop_flip")
    if choice != "auto":
        return choice == "true"
    return cfg.augmentation != STREAM_ONLY_AUGMENTATION and decoded_mb(cfg, images) <= cfg.memory_budget_mb


def open_folder(cfg, device: torch.device, shard: Shard = Shard()) -> Source:
    """An image folder, checked file by file before training, streamed or decoded into memory."""
    stream = FolderSource(_checked_layout(cfg), cfg, device, shard)
    images = sum(stream.size(s) for s in stream.layout.splits)
    if not in_memory(cfg, images):
        return stream
    return MemorySource(memory.load(cfg, lambda _: _dataset(stream)).to(device), cfg, device, shard)


def _checked_layout(cfg) -> folder_layout.Layout:
    layout = folder_layout.find(cfg)
    check_files(layout, bool(cfg.skip_bad_files))
    return layout


def _dataset(stream: FolderSource) -> Dataset:
    splits = {name: Split(x, y) for name, (x, y) in stream.decoded().items()}
    return Dataset(stream.name, splits["train"], splits["test"], splits.get("val"), stream.num_classes)
