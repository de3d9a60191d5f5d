"""Whether a data set's files are where `data.root` says, checked before anything slow or lasting.

A wrong or missing `data.root` is the first mistake a new user makes. Found by the loaders, it
cost the torch, torchvision and MLflow imports and the store's set-up first (seconds), and left a
run folder behind. This check needs the standard library only, so the entry point runs it before
those imports and before a sweep starts. It looks for the files by the names torchvision reads;
reading them (and reporting a damaged one) stays the loaders' work (kdexp/data/memory.py,
kdexp/data/folder_layout.py).
"""

from __future__ import annotations

from pathlib import Path

# The image folders (kdexp/data/sources.py opens them); every other name is a torchvision set.
FOLDER_SETS = ("imagefolder", "imagenet", "tiny_imagenet")

_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# data.name → (the folder under data.root torchvision reads, the files it needs there).
TORCHVISION_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mnist": ("MNIST/raw", _IDX),
    "fashion_mnist": ("FashionMNIST/raw", _IDX),
    "kmnist": ("KMNIST/raw", _IDX),
    "cifar10": ("cifar-10-batches-py", (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")),
    "cifar100": ("cifar-100-python", ("train", "test", "meta")),
}


def missing_data(cfg) -> str | None:
    """One line saying what is missing for the `data` section `cfg`, or None when its files are
    there (or will be fetched: `data.download=true`; or ship with kdexp: mnist5k)."""
    if cfg.name in FOLDER_SETS:
        return folder_root_problem(cfg.root)
    if cfg.name not in TORCHVISION_FILES or getattr(cfg, "download", False):
        return None
    folder, names = TORCHVISION_FILES[cfg.name]
    where = (Path(str(cfg.root)).expanduser() / folder).absolute()
    absent = [n for n in names if not (where / n).is_file()]
    if not absent:
        return None
    shown = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more" if len(absent) > 3 else "")
    return (f"data.name={cfg.name}: no usable files under {where} (missing {shown}); run once with "
            f"data.download=true (needs internet) or set data.root to a folder that has them")


def folder_root_problem(root) -> str | None:
    """Why an image folder's `data.root` cannot be one, or None (its layout is checked on reading)."""
    if Path(str(root)).expanduser().is_dir():
        return None
    return f"data.root={root}: not a folder; expected DIR/train/<class>/*, DIR/val/<class>/* or DIR/<class>/*"
