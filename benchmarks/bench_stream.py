"""kdexp's streaming image-folder path against a plain torchvision loop (issue 24): prints figures.

From the repository root, with the project's virtual environment active:

    python benchmarks/bench_stream.py                  # 20,000 JPEGs, 2 epochs per reader, 3 rounds
    python benchmarks/bench_stream.py --images 4000 --rounds 1   # a smoke run
    python benchmarks/bench_stream.py --workers 8 --size 224 --side 256   # ImageNet-like sizes

1. data: `--images` JPEGs (quality 90) of `--side` x `--side` pixels, smooth random colour fields
   (so they compress like photos, not like noise), in 100 class folders `<tmp>/train/<class>/`;
2. the plain loop, what torchdistill, mdistiller and RepDistiller do: `torchvision.datasets.ImageFolder`
   (PIL decoding) with `v2.Compose([RandomResizedCrop(size), RandomHorizontalFlip(), ToImage(),
   ToDtype(float32, scale=True), Normalize(ImageNet)])` in a `DataLoader(shuffle=True,
   num_workers=W, persistent_workers=True, prefetch_factor=2)`;
3. kdexp: `FolderSource.train_batches(generator, augment=True)` on the same folder and workers (the
   same crop and flip; decoding by torchvision.io, normalisation after the copy, in the main process);
4. decoding alone, one process, no transform: images/s per core with torchvision.io and with PIL.
Each reader runs `--epochs` epochs per round (the first includes its workers' start); images/s is
the median over `--rounds` interleaved rounds, so a shared machine's noise hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_images(root: Path, count: int, side: int, classes: int = 100) -> None:
    """`count` JPEGs, smooth colour fields (a 4x4 random grid upscaled), `classes` folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / "train" / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
        (root / "val" / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(grid).resize((side, side), Image.BILINEAR)
        img.save(root / "train" / f"c{i % classes:03d}" / f"{i:06d}.jpg", quality=90)
    for c in range(classes):  # kdexp needs a val split; one image per class
        img = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((side, side))
        img.save(root / "val" / f"c{c:03d}" / "0.jpg", quality=90)


def plain_loader(root: Path, size: int, workers: int, batch: int):
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    data = ImageFolder(str(root / "train"), transform=transform)
    extra = dict(persistent_workers=True, prefetch_factor=2) if workers else {}
    return DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, **extra)


def kdexp_source(root: Path, size: int, workers: int, batch: int):
    from omegaconf import OmegaConf

    from kdexp.config.sections import DataConfig
    from kdexp.data.sources import open_source

    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), dict(
        name="imagefolder", root=str(root), image_size=size, workers=workers, batch_size=batch,
        augmentation="resized_crop_flip", in_memory="false"))
    return open_source(cfg, torch.device("cpu"))


def images_per_second(epochs_fn, epochs: int) -> float:
    started, images = time.perf_counter(), 0
    for e in range(epochs):
        for x, *_ in epochs_fn(e):
            images += len(x)
    return images / (time.perf_counter() - started)


def decode_rate(paths: list[str], seconds: float = 3.0) -> tuple[float, float]:
    """Images/s of one process decoding to uint8 tensors: torchvision.io, then PIL."""
    import warnings

    from PIL import Image
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as F

    warnings.simplefilter("ignore", DeprecationWarning)
    rates = []
    for decode in (lambda p: decode_image(p, mode=ImageReadMode.RGB),
                   lambda p: F.pil_to_tensor(Image.open(p).convert("RGB"))):
        started, n = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            decode(paths[n % len(paths)])
            n += 1
        rates.append(n / (time.perf_counter() - started))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--side", type=int, default=80, help="pixels of each generated JPEG")
    parser.add_argument("--size", type=int, default=64, help="data.image_size (the crop)")
    parser.add_argument("--workers", type=int, default=None, help="default: the cores here, at most 8")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from kdexp.data.folder import default_workers

    workers = default_workers() if args.workers is None else args.workers
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        write_images(root, args.images, args.side)
        print(f"data: {args.images:,} JPEGs of {args.side}x{args.side} written in {time.perf_counter() - started:.1f} s; "
              f"crop {args.size}, batch {args.batch}, {workers} workers, {torch.get_num_threads()} threads")
        plain, ours = [], []
        started = time.perf_counter()
        loader = plain_loader(root, args.size, workers, args.batch)
        plain_open = time.perf_counter() - started
        started = time.perf_counter()
        source = kdexp_source(root, args.size, workers, args.batch)  # finds the files and checks each one's bytes
        print(f"opening the folder: plain ImageFolder {plain_open:.2f} s, kdexp (with the file check) "
              f"{time.perf_counter() - started:.2f} s")
        generator = torch.Generator().manual_seed(0)
        for r in range(args.rounds):
            plain.append(images_per_second(lambda e: loader, args.epochs))
            ours.append(images_per_second(lambda e: source.train_batches(generator, augment=True), args.epochs))
            print(f"  round {r + 1}: plain {plain[-1]:,.0f} img/s, kdexp {ours[-1]:,.0f} img/s")
        p, k = statistics.median(plain), statistics.median(ours)
        print(f"plain ImageFolder + DataLoader: {p:,.0f} img/s")
        print(f"kdexp streaming (FolderSource): {k:,.0f} img/s  ({k / p:.2f}x the plain loop; target >= 0.95x)")
        tvio, pil = decode_rate(source.layout.splits["train"].paths)
        print(f"decode per core (one process, {args.side}x{args.side} JPEG → uint8 tensor): "
              f"torchvision.io {tvio:,.0f} img/s, PIL {pil:,.0f} img/s")


if __name__ == "__main__":
    main()
