"""An image folder read as a stream: DataLoader workers decode and transform files, the device
normalises. For data that does not fit in memory (ImageNet) and any user's own photo folder.

The order is the loop's: each epoch's permutation is drawn in the main process from the phase's
generator (`epoch_order`), cut into global batches, and this process's rows (`Shard`) are handed to
the DataLoader as a batch sampler, so the batches are those the in-memory source would give.
With augmentation, one more number is drawn from the same generator per epoch; an image's crop
and flip are drawn from a generator seeded by that number and the image's index, so they do not
depend on which worker reads it, nor on how many there are, and a run resumed at an epoch
boundary (the generator restored from its checkpoint) repeats its batches exactly.

Workers return uint8 `(C, H, W)` images (a quarter of float32's bytes through shared memory and
the host-to-device copy, pinned when the device is a GPU); scaling and standardising happen on the
device, with the same operations as the in-memory source's, so both give the same tensors.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kdexp.config.checks import ConfigError
from kdexp.data.folder_layout import FileSplit, Layout
from kdexp.data.images import BadImage, Recipe, check_file, decode
from kdexp.data.source import Batch, Shard, Source, epoch_order, global_batches

log = logging.getLogger(__name__)

Key = tuple[str, int, int]  # (split, index in the split, augmentation seed; -1: the eval recipe)


class Files(Dataset):
    """The files of every split, read by key; a file that fails to decode is None with
    `skip_bad` (dropped from its batch by `collate`), else raises naming it."""

    def __init__(self, splits: dict[str, FileSplit], size: int, channels: int, skip_bad: bool):
        self.splits, self.recipe, self.channels, self.skip_bad = splits, Recipe(size), channels, skip_bad

    def __len__(self) -> int:
        return sum(len(s) for s in self.splits.values())

    def __getitem__(self, key: Key):
        split, i, seed = key
        files = self.splits[split]
        try:
            img = decode(files.paths[i], self.channels)
        except BadImage:
            if self.skip_bad:
                return files.paths[i]
            raise
        if seed < 0:
            img = self.recipe.eval(img)
        else:
            img = self.recipe.train(img, torch.Generator().manual_seed((seed + 1_000_003 * i) % 2**63))
        return img, int(files.labels[i]), i


def collate(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Stack the decoded images; the paths of skipped files come back for the count."""
    bad = [item for item in items if isinstance(item, str)]
    good = [item for item in items if not isinstance(item, str)]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), bad
    return (torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]),
            torch.tensor([g[2] for g in good]), bad)


class Plan(Sampler):
    """The batches of keys the next pass reads: set before each `iter(loader)` (persistent workers
    re-read it at every new pass)."""

    def __init__(self):
        self.batches: list[list[Key]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def default_workers() -> int:
    """The threads kdexp uses (`trainer.threads`, else torch's default: the cores it may run on), at most 8."""
    return max(0, min(8, torch.get_num_threads()))


def check_files(layout: Layout, skip_bad: bool) -> int:
    """Look at every file's first and last bytes (threads: it waits on the disk); a bad one is refused
    naming it, or with `skip_bad` dropped from its split. Returns the number skipped."""
    skipped = 0
    with ThreadPoolExecutor(16) as pool:
        for name, split in list(layout.splits.items()):
            problems = list(pool.map(check_file, split.paths, chunksize=256))
            bad = [i for i, p in enumerate(problems) if p is not None]
            if bad and not skip_bad:
                i = bad[0]
                more = f" ({len(bad) - 1} more in {name})" if len(bad) > 1 else ""
                raise ConfigError(f"data.root: {split.paths[i]} {problems[i]}{more}; remove it, or set "
                                  f"data.skip_bad_files=true to skip such files")
            for i in bad:
                log.warning("data: skipped %s: it %s", split.paths[i], problems[i])
            if bad:
                layout.splits[name] = split.subset(np.setdiff1d(np.arange(len(split)), bad))
                skipped += len(bad)
    return skipped


class FolderSource(Source):
    """`Layout` (kdexp/data/folder_layout.py) as a stream of batches."""

    def __init__(self, layout: Layout, cfg, device: torch.device, shard: Shard = Shard()):
        super().__init__(cfg, device, shard)
        self.layout, self.name = layout, str(cfg.name)
        self.num_classes = len(layout.classes)
        self.input_shape = (int(cfg.channels), int(cfg.image_size), int(cfg.image_size))
        self.skipped: set[str] = set()
        self.files = Files(layout.splits, int(cfg.image_size), int(cfg.channels), bool(cfg.skip_bad_files))
        self.plan = Plan()
        workers = default_workers() if cfg.workers is None else int(cfg.workers)
        extra = dict(persistent_workers=True, prefetch_factor=int(cfg.prefetch)) if workers else {}
        self.loader = DataLoader(self.files, batch_sampler=self.plan, num_workers=workers, collate_fn=collate,
                                 pin_memory=device.type == "cuda", **extra)
        self.mean = torch.tensor(list(cfg.mean), device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(cfg.std), device=device).view(1, -1, 1, 1)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return ("test", "val") if "val" in self.layout.splits else ("test",)

    def size(self, split: str) -> int:
        return len(self.layout.splits[split])

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 `(N, C, H, W)` → float scaled to [0, 1] and standardised: the in-memory source's
        operations (kdexp/data/memory.py `_normalise`), in the same order."""
        return x.float().div_(255.0).sub_(self.mean).div_(self.std)

    def _read(self, batches: list[list[Key]]) -> Iterator[Batch]:
        self.plan.batches = batches
        blocking = self.device.type == "cuda"
        for x, y, idx, bad in self._worker_errors(self.loader):
            self._note_skipped(bad)
            if len(y):
                x = self.normalise(x.to(self.device, non_blocking=blocking))
                yield x, y.to(self.device, non_blocking=blocking), idx.to(self.device, non_blocking=blocking)

    @staticmethod
    def _worker_errors(loader: DataLoader):
        """`loader`'s batches; a file a worker could not decode is raised as the one line naming it
        (the DataLoader's own message carries the worker's traceback)."""
        try:
            yield from loader
        except BadImage as err:
            raise BadImage(str(err).strip().splitlines()[-1].split("BadImage: ")[-1]) from None

    def _note_skipped(self, bad: list[str]) -> None:
        for path in bad:
            if path not in self.skipped:
                self.skipped.add(path)
                log.warning("data: skipped %s (cannot be decoded; %d skipped so far)", path, len(self.skipped))

    def train_batches(self, generator: torch.Generator, augment: bool) -> Iterator[Batch]:
        order = epoch_order(self.size("train"), generator)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if augment else -1
        return self._read([[("train", i, seed) for i in self.shard.take(b).tolist()]
                           for b in global_batches(order, int(self.cfg.batch_size))])

    def eval_batches(self, split: str) -> Iterator[Batch]:
        order = torch.arange(self.size(split))
        return self._read([[(split, i, -1) for i in self.shard.take(b).tolist()]
                           for b in global_batches(order, int(self.cfg.eval_batch_size))])

    def sample(self, n: int = 2, split: str = "train") -> torch.Tensor:
        x = torch.stack([self.files[(split, i, -1)][0] for i in range(n)])
        return self.normalise(x.to(self.device))

    def decoded(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every split decoded once by the eval recipe, normalised, on the CPU: the in-memory copy."""
        out = {}
        for split in self.layout.splits:
            parts = list(self._read_cpu(split))
            out[split] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        return out

    def _read_cpu(self, split: str):
        order = torch.arange(self.size(split))
        self.plan.batches = [[(split, i, -1) for i in b.tolist()] for b in global_batches(order, 256)]
        for x, y, _, bad in self._worker_errors(self.loader):
            self._note_skipped(bad)  # with data.skip_bad_files (else decoding raised)
            yield self.normalise_cpu(x), y

    def normalise_cpu(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0).sub_(self.mean.cpu()).div_(self.std.cpu())
