"""The benchmark's data path (benchmarks/bench_speed.py): the IDX files it writes are read back by
torchvision's MNIST class with the right shapes and labels, and every tiled image is its source
digit shifted by at most a pixel (so the labels stay right)."""

from __future__ import annotations

import numpy as np
import torch

from helpers import bench_speed


def test_idx_files_read_back_by_torchvision(tmp_path):
    from torchvision.datasets import MNIST

    bench = bench_speed()
    tx, ty, vx, vy = bench.make_mnist_like(n_train=37, n_test=13)
    raw = bench.write_mnist_raw(tmp_path, tx, ty, vx, vy)
    assert raw == tmp_path / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]

    train = MNIST(str(tmp_path), train=True, download=False)
    test = MNIST(str(tmp_path), train=False, download=False)
    assert train.data.shape == (37, 28, 28) and train.data.dtype == torch.uint8
    assert test.data.shape == (13, 28, 28)
    assert torch.equal(train.data, torch.from_numpy(tx)) and torch.equal(test.data, torch.from_numpy(vx))
    assert train.targets.tolist() == ty.tolist() and test.targets.tolist() == vy.tolist()
    assert set(train.targets.tolist()) <= set(range(10))
    image, label = train[0]  # the article's access path: a PIL image and an int
    assert image.size == (28, 28) and label == int(ty[0])


def test_tiles_are_shifted_copies_of_their_sources():
    bench = bench_speed()
    rng = np.random.default_rng(3)
    sources = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    sources[:, [0, -1], :] = 0  # a blank border, like MNIST's, so a shift loses nothing
    sources[:, :, [0, -1]] = 0
    labels = np.arange(5, dtype=np.uint8)
    images, tiled_labels, order = bench.tile(sources, labels, 23, rng)
    assert images.shape == (23, 28, 28) and images.dtype == np.uint8
    assert sorted(np.bincount(order, minlength=5).tolist()) == [4, 4, 5, 5, 5]  # every source in turn
    assert np.array_equal(tiled_labels, labels[order])
    for img, src in zip(images, order):
        shifts = [np.roll(sources[src], (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert any(np.array_equal(img, s) for s in shifts)


def test_train_and_test_sources_are_disjoint_and_stratified():
    bench = bench_speed()
    y = np.repeat(np.arange(10), 50)
    train, test = bench.split_sources(y, test_sources=100, seed=0)
    assert len(test) == 100 and len(train) == 400 and not set(train) & set(test)
    assert np.bincount(y[test]).tolist() == [10] * 10
