"""What an image folder holds: its splits, its classes and its files, found the way torchvision's
`ImageFolder` finds them (a class per sub-folder, sorted by name; files with an image extension,
searched recursively), with every layout mistake refused in one line before any training.

Layouts (`data.root` = DIR):
- `DIR/train/<class>/...` and `DIR/val/<class>/...` (ImageNet's): `val` is kdexp's `test` split;
- `DIR/val/images/*` + `DIR/val/val_annotations.txt` (Tiny ImageNet's val: a file name and its class
  per line) instead of class folders under val;
- `DIR/<class>/...`: `data.val_size` images (stratified, `data.split_seed`) are held out as `test`.
With the first two, `data.val_size` > 0 holds a `val` split out of train, as for the in-memory sets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdexp.config.checks import ConfigError
from kdexp.data.expected import folder_root_problem

# The extensions torchvision's ImageFolder accepts (torchvision.datasets.folder.IMG_EXTENSIONS).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ANNOTATIONS = "val_annotations.txt"


@dataclass
class FileSplit:
    """One split as files: `paths[i]` has label `labels[i]`."""

    paths: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: np.ndarray) -> "FileSplit":
        return FileSplit([self.paths[i] for i in idx], self.labels[idx])


@dataclass
class Layout:
    classes: list[str]
    splits: dict[str, FileSplit]  # "train", "test" and, with data.val_size, "val"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _subdirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except PermissionError:
        raise ConfigError(f"data.root: cannot read {folder} (permission denied); allow reading it (chmod +rx)") from None


def _images_under(folder: Path) -> list[str]:
    """Every image file under `folder`, sorted (ImageFolder's order); an unreadable folder or file
    is refused here, before training."""
    found = []
    for top, dirs, files in os.walk(folder, onerror=_walk_error, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            if _is_image(name):
                path = os.path.join(top, name)
                if not os.access(path, os.R_OK):
                    raise ConfigError(f"data.root: cannot read {path} (permission denied); allow reading it (chmod +r)")
                found.append(path)
    return found


def _walk_error(err: OSError) -> None:
    raise ConfigError(f"data.root: cannot read {err.filename} ({err.strerror}); allow reading it (chmod +rx)")


def _class_folders(split_dir: Path, classes: list[str]) -> FileSplit:
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = _images_under(split_dir / name)
        if not files:
            raise ConfigError(f"data.root: the class folder {split_dir / name} has no image files "
                              f"({', '.join(IMG_EXTENSIONS)}); remove it or add images")
        paths += files
        labels += [label] * len(files)
    return FileSplit(paths, np.asarray(labels, dtype=np.int64))


def _same_classes(train: list[str], other: list[str], where: Path) -> None:
    missing, extra = sorted(set(train) - set(other)), sorted(set(other) - set(train))
    if missing or extra:
        parts = ([f"in train but not in {where.name}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"]
                 if missing else []) + ([f"in {where.name} but not in train: {', '.join(extra[:5])}"] if extra else [])
        raise ConfigError(f"data.root: {where} does not have the class folders of train ({'; '.join(parts)}); "
                          f"every split needs the same classes")


def _annotated(val_dir: Path, classes: list[str]) -> FileSplit:
    """Tiny ImageNet's val: `val/images/<file>` labelled by `val/val_annotations.txt`."""
    index = {name: i for i, name in enumerate(classes)}
    paths, labels = [], []
    for line_no, line in enumerate((val_dir / ANNOTATIONS).read_text().splitlines(), start=1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise ConfigError(f"data.root: {val_dir / ANNOTATIONS} line {line_no} names "
                              f"{fields[1] if len(fields) > 1 else line!r}, not a class folder of train")
        path = val_dir / "images" / fields[0]
        if not path.is_file():
            raise ConfigError(f"data.root: {val_dir / ANNOTATIONS} line {line_no} names {path}, which does not exist")
        paths.append(str(path))
        labels.append(index[fields[1]])
    return FileSplit(paths, np.asarray(labels, dtype=np.int64))


def _describe(root: Path) -> str:
    entries = sorted(os.listdir(root))
    files = [e for e in entries if (root / e).is_file()]
    dirs = [e for e in entries if (root / e).is_dir()]
    return (f"{len(dirs)} folders ({', '.join(dirs[:4])}{' ...' if len(dirs) > 4 else ''}) and {len(files)} files"
            if entries else "nothing")


def find(cfg) -> Layout:
    """The splits and classes under `cfg.root` (the layouts of the module docstring)."""
    from kdexp.data.memory import stratified_split

    root = Path(str(cfg.root)).expanduser()
    if (problem := folder_root_problem(cfg.root)) is not None:
        raise ConfigError(problem)
    expected = "DIR/train/<class>/* and DIR/val/<class>/* (or DIR/<class>/* with data.val_size > 0)"
    top = _subdirs(root)
    if "train" in top:
        classes = _subdirs(root / "train")
        if not classes:
            raise ConfigError(f"data.root={root}: train/ has no class folders; expected {expected}, "
                              f"found in train/ {_describe(root / 'train')}")
        train = _class_folders(root / "train", classes)
        val_dir = root / "val"
        if (val_dir / ANNOTATIONS).is_file():
            test = _annotated(val_dir, classes)
        elif val_dir.is_dir():
            _same_classes(classes, _subdirs(val_dir), val_dir)
            test = _class_folders(val_dir, classes)
        else:
            raise ConfigError(f"data.root={root}: has train/ but no val/; expected {expected}, found {_describe(root)}")
        splits = {"train": train, "test": test}
        if cfg.val_size:
            _require_fewer(cfg.val_size, train)
            tr, va = stratified_split(train.labels, cfg.val_size, cfg.split_seed + 1)
            splits.update(train=train.subset(tr), val=train.subset(va))
    else:
        classes = top
        if not classes or not cfg.val_size:
            why = "no class folders" if not classes else "class folders but data.val_size=0 (nothing to test on)"
            raise ConfigError(f"data.root={root}: {why}; expected {expected}, found {_describe(root)}")
        everything = _class_folders(root, classes)
        _require_fewer(cfg.val_size, everything)
        tr, te = stratified_split(everything.labels, cfg.val_size, cfg.split_seed)
        splits = {"train": everything.subset(tr), "test": everything.subset(te)}
    if cfg.limit_train:
        splits["train"] = splits["train"].subset(np.arange(min(cfg.limit_train, len(splits["train"]))))
    return Layout(classes, splits)


def _require_fewer(val_size: int, split: FileSplit) -> None:
    if val_size >= len(split):
        raise ConfigError(f"data.val_size={val_size} is not allowed; must be < {len(split)} training images")
