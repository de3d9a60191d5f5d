"""Data sets read through torchvision from tiny files in the real on-disk formats, the mnist5k split,
and the batch augmentations."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_cfg
from kdexp.data import memory as data
from kdexp.config.checks import ConfigError

# --- writers of the real formats ---------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as published by LeCun et al.: magic 0x00 0x00 0x08 (ubyte) ndim, then each size
    as a big-endian int32, then the bytes (uncompressed, as torchvision keeps them in `raw/`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_like(root: Path, folder: str, train: int = 30, test: int = 10, labels: int = 10, seed: int = 0):
    """`<root>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`; returns the arrays."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        targets = (np.arange(n) % labels).astype(np.uint8)
        write_idx(root / folder / "raw" / f"{split}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{split}-labels-idx1-ubyte", targets)
        out[split] = (images, targets)
    return out


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 4, test: int = 6, seed: int = 0):
    """`<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`: pickled dicts whose
    `data` rows are 3072 bytes (1024 red, 1024 green, 1024 blue, each row-major) and `labels` ints."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    rows, labels = [], []
    for i in range(1, 6):
        r = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        lab = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        _pickle(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "data": r,
                                             "labels": lab, "filenames": [f"{i}_{j}.png" for j in range(per_batch)]})
        rows.append(r)
        labels += lab
    t = rng.integers(0, 256, size=(test, 3072), dtype=np.uint8)
    tl = [int(v) for v in rng.integers(0, 10, size=test)]
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": t, "labels": tl,
                                    "filenames": [f"t_{j}.png" for j in range(test)]})
    _pickle(folder / "batches.meta", {"label_names": [f"class{c}" for c in range(10)],
                                      "num_cases_per_batch": per_batch, "num_vis": 3072})
    return np.concatenate(rows), np.array(labels), t, np.array(tl)


def write_cifar100(root: Path, train: int = 12, test: int = 6, seed: int = 0):
    """`<root>/cifar-100-python/{train, test, meta}` with `fine_labels` (100) and `coarse_labels` (20).
    The labels stay below 7, so the class count can only come from the meta file."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    out = []
    for name, n in (("train", train), ("test", test)):
        r = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 7, size=n)]
        _pickle(folder / name, {"filenames": [f"{name}_{j}.png" for j in range(n)], "batch_label": name,
                                "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": r})
        out += [r, np.array(fine)]
    _pickle(folder / "meta", {"fine_label_names": [f"fine{c}" for c in range(100)],
                              "coarse_label_names": [f"coarse{c}" for c in range(20)]})
    return out


@pytest.fixture
def cifar_md5_skipped(monkeypatch):
    """torchvision compares every CIFAR file with the md5 of the published archive's member
    (`CIFAR10._check_integrity` and `_load_meta`, both through `cifar.check_integrity`); tiny test
    files cannot match those sums. Only that comparison is replaced, by an existence check, so the
    real unpickling, stacking, (N, 3072) → (N, 3, 32, 32) → HWC reshaping and meta reading run."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def _pixels(x: torch.Tensor, name: str) -> torch.Tensor:
    """Undo the normalisation: back to 0..255 values."""
    mean, std = data.STATS[name]
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return ((x * s + m) * 255).round()


# --- torchvision data sets ---------------------------------------------------------


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_idx_data_sets_load_as_normalised_tensors(tmp_path, name, folder):
    arrays = write_mnist_like(tmp_path, folder, labels=5)
    cfg = compose_cfg([f"data={name}", f"data.root={tmp_path}"], fast=False).data
    ds = data.load(cfg)
    images, labels = arrays["train"]
    assert ds.input_shape == (1, 28, 28)
    assert ds.train.x.dtype == torch.float32 and ds.train.x.shape == (30, 1, 28, 28)
    assert ds.test.x.shape == (10, 1, 28, 28)
    assert ds.num_classes == 10  # the data set's 10 classes, although only 0..4 occur here
    assert torch.equal(ds.train.y, torch.from_numpy(labels.astype(np.int64)))
    assert torch.equal(_pixels(ds.train.x, name)[:, 0], torch.from_numpy(images).float())
    mean, std = data.STATS[name]
    expected = (images[3, 5, 7] / 255 - mean[0]) / std[0]
    assert float(ds.train.x[3, 0, 5, 7]) == pytest.approx(expected, abs=1e-5)


def test_cifar10_pickled_batches_load_as_nchw_tensors(tmp_path, cifar_md5_skipped):
    train_rows, train_labels, test_rows, test_labels = write_cifar10(tmp_path)
    cfg = compose_cfg(["data=cifar10", f"data.root={tmp_path}"], fast=False).data
    ds = data.load(cfg)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert len(ds.train) == 20 and len(ds.test) == 6  # all five training batches, in order
    assert torch.equal(ds.train.y, torch.from_numpy(train_labels))
    assert torch.equal(ds.test.y, torch.from_numpy(test_labels))
    # Row layout: 1024 red, 1024 green, 1024 blue values, each image row by row.
    pixels = _pixels(ds.train.x, "cifar10")
    expected = torch.from_numpy(train_rows.reshape(20, 3, 32, 32)).float()
    assert torch.equal(pixels, expected)
    i, c, y, x = 13, 2, 4, 30
    assert pixels[i, c, y, x] == train_rows[i, c * 1024 + y * 32 + x]
    # Per-channel normalisation: each channel with its own mean and std.
    mean, std = data.STATS["cifar10"]
    for ch in range(3):
        v = train_rows[i, ch * 1024 + y * 32 + x] / 255
        assert float(ds.train.x[i, ch, y, x]) == pytest.approx((v - mean[ch]) / std[ch], abs=1e-5)


def test_cifar100_fine_labels_and_class_count_from_meta(tmp_path, cifar_md5_skipped):
    train_rows, train_fine, test_rows, test_fine = write_cifar100(tmp_path)
    cfg = compose_cfg(["data=cifar100", f"data.root={tmp_path}"], fast=False).data
    ds = data.load(cfg)
    assert ds.input_shape == (3, 32, 32)
    assert ds.num_classes == 100  # from the meta file's fine_label_names, not from max label + 1
    assert torch.equal(ds.train.y, torch.from_numpy(train_fine))
    assert torch.equal(_pixels(ds.test.x, "cifar100"), torch.from_numpy(test_rows.reshape(6, 3, 32, 32)).float())


def test_cifar_md5_is_really_checked_without_the_fixture(tmp_path):
    """The honest path: the tiny files are refused by torchvision's checksum, as a ConfigError."""
    write_cifar10(tmp_path)
    cfg = compose_cfg(["data=cifar10", f"data.root={tmp_path}"], fast=False).data
    with pytest.raises(ConfigError, match="cifar-10-batches-py"):
        data.load(cfg)


@pytest.mark.parametrize("name,folder", [
    ("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"), ("kmnist", "KMNIST/raw"),
    ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
])
def test_missing_files_give_one_line_naming_the_folder_and_the_fix(tmp_path, name, folder):
    cfg = compose_cfg([f"data={name}", f"data.root={tmp_path / 'empty'}"], fast=False).data
    with pytest.raises(ConfigError) as err:
        data.load(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert str((tmp_path / "empty" / folder).resolve()) in message
    assert "data.download=true" in message and "data.root" in message


def test_limit_and_validation_split_apply_to_torchvision_sets(tmp_path):
    write_mnist_like(tmp_path, "FashionMNIST", train=40)
    cfg = compose_cfg(["data=fashion_mnist", f"data.root={tmp_path}", "data.val_size=10",
                       "data.limit_train=20"], fast=False).data
    ds = data.load(cfg)
    assert len(ds.val) == 10 and len(ds.train) == 20
    assert sorted(ds.val.y.tolist()) == [c for c in range(10) for _ in range(1)]  # stratified: one per class


# --- the embedded mnist5k split ----------------------------------------------------


def test_stratified_split_is_deterministic_and_stratified():
    y = np.repeat(np.arange(10), 50)  # 10 classes x 50
    train, test = data.stratified_split(y, 100, seed=3)
    train2, test2 = data.stratified_split(y, 100, seed=3)
    assert np.array_equal(train, train2) and np.array_equal(test, test2)
    assert len(test) == 100 and len(train) == 400
    assert not set(train) & set(test) and set(train) | set(test) == set(range(500))
    assert np.bincount(y[test], minlength=10).tolist() == [10] * 10
    assert np.bincount(y[train], minlength=10).tolist() == [40] * 10
    _, other = data.stratified_split(y, 100, seed=4)
    assert not np.array_equal(test, other)


def test_mnist5k_split_is_fixed_and_balanced():
    cfg = compose_cfg([], fast=False).data
    a, b = data.load(cfg), data.load(cfg)
    assert torch.equal(a.test.y, b.test.y) and torch.equal(a.train.x, b.train.x)
    assert len(a.train) == 4000 and len(a.test) == 1000 and a.num_classes == 10
    assert torch.bincount(a.test.y, minlength=10).tolist() == [100] * 10


# --- augmentation -------------------------------------------------------------------


def test_random_shift_keeps_shape_and_values():
    g = torch.Generator().manual_seed(0)
    x = torch.full((16, 1, 28, 28), -0.4242)
    x[:, :, 10:18, 10:18] = torch.arange(64.0).view(8, 8)  # a patch well away from the borders
    out = data.random_shift(x, 2, g)
    assert out.shape == x.shape
    for i in range(16):  # the same patch, moved by at most 2 pixels, on the same background
        assert torch.equal(out[i].flatten().sort().values, x[i].flatten().sort().values)
        ys, xs = torch.nonzero(out[i, 0] == 63.0, as_tuple=True)
        assert abs(int(ys) - 17) <= 2 and abs(int(xs) - 17) <= 2
    assert not all(torch.equal(out[i], x[i]) for i in range(16))
    assert torch.equal(data.random_shift(x, 0, g), x)


def test_crop_flip_crops_a_padded_window_and_flips_about_half():
    g = torch.Generator().manual_seed(0)
    n, c, h, w = 64, 3, 32, 32
    x = torch.randn(n, c, h, w)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    out = data.random_crop_flip(x, 4, g, fill)
    assert out.shape == x.shape
    padded = fill.view(1, c, 1, 1).expand(n, c, h + 8, w + 8).clone()
    padded[:, :, 4:4 + h, 4:4 + w] = x
    flips = 0
    for i in range(n):
        windows = [padded[i, :, dy:dy + h, dx:dx + w] for dy in range(9) for dx in range(9)]
        plain = any(torch.equal(out[i], win) for win in windows)
        flipped = any(torch.equal(out[i].flip(2), win) for win in windows)
        assert plain or flipped
        flips += int(flipped and not plain)
    assert 16 <= flips <= 48
    # The same generator state gives the same batch.
    a = data.random_crop_flip(x, 4, torch.Generator().manual_seed(5), fill)
    b = data.random_crop_flip(x, 4, torch.Generator().manual_seed(5), fill)
    assert torch.equal(a, b)
    # Without padding every image is itself or its mirror image.
    out0 = data.random_crop_flip(x, 0, g)
    assert all(torch.equal(out0[i], x[i]) or torch.equal(out0[i], x[i].flip(2)) for i in range(n))


def test_make_augmenter_follows_data_augmentation():
    cifar = compose_cfg(["data=cifar100"], fast=False).data
    assert cifar.augment and cifar.augmentation == "crop_flip" and cifar.crop_padding == 4
    x = torch.zeros(8, 3, 32, 32) + 5.0
    out = data.make_augmenter(cifar, torch.Generator().manual_seed(0))(x)
    mean, std = data.STATS["cifar100"]
    black = [-m / s for m, s in zip(mean, std)]  # the padding is a black pixel, normalised
    for ch in range(3):
        image, pad = (out[:, ch] - 5.0).abs() < 1e-6, (out[:, ch] - black[ch]).abs() < 1e-5
        assert bool((image | pad).all()) and bool(pad.any())
    assert (out == 5.0).float().mean() > 0.7
    mnist = compose_cfg(["data.augment=true"], fast=False).data
    assert mnist.augmentation == "shift"
    y = torch.randn(4, 1, 28, 28)
    assert data.make_augmenter(mnist, torch.Generator().manual_seed(0))(y).shape == y.shape


@pytest.mark.parametrize("override,key", [
    ("data.augmentation=rotate", "data.augmentation"),
    ("data.crop_padding=-1", "data.crop_padding"),
])
def test_bad_augmentation_settings_are_refused_in_one_line(override, key):
    with pytest.raises(ConfigError) as err:
        compose_cfg([override])
    assert str(err.value).startswith(key) and "\n" not in str(err.value)
