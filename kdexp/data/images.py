"""One image file → one uint8 tensor `(C, H, W)` of the size models see: checking, decoding and the
standard ImageNet recipes (torchvision transforms v2 functionals).

- `check_file`: a cheap look at a file's first and last bytes, run on every file before training:
  not an image (no known signature), or a truncated JPEG/PNG (no end marker), is named in one line.
- `decode`: torchvision.io (libjpeg-turbo / libpng, on uint8 tensors, no PIL round trip: faster)
  with PIL as the fallback for the formats torchvision.io does not read (PPM/PGM, BMP, TIFF).
- `Recipe`: train = RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) + horizontal flip;
  eval = Resize(size / 0.875) + CenterCrop(size) (224 ← 256: the torchvision/ImageNet recipe).
  The random draws come from a generator the caller seeds per sample, never from torch's global
  RNG, so an image gets the same crop in any worker process, on any number of workers.
"""

from __future__ import annotations

import math
import warnings

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from kdexp.config.checks import ConfigError

# File signatures (first bytes) of the formats torchvision.io or PIL decode.
_SIGNATURES = {
    b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png", b"GIF87a": "gif", b"GIF89a": "gif", b"BM": "bmp",
    b"II*\x00": "tiff", b"MM\x00*": "tiff", b"P5": "pnm", b"P6": "pnm", b"P2": "pnm", b"P3": "pnm",
}
# The bytes each format must end with (within its last 16 bytes): a missing one is a truncated file.
_END_MARKERS = {"jpeg": b"\xff\xd9", "png": b"IEND"}


class BadImage(ConfigError):
    """A file that cannot be used as an image; the message (one line) names it and says why."""


def file_format(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return next((kind for sig, kind in _SIGNATURES.items() if head.startswith(sig)), None)


def check_file(path: str) -> str | None:
    """Why `path` is not a usable image (one phrase), or None. Reads 32 bytes of it."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, f.seek(0, 2) - 16))
            tail = f.read(16)
    except PermissionError:
        return "cannot be read (permission denied; chmod +r)"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    kind = file_format(head)
    if kind is None:
        return "is not an image (no JPEG, PNG, GIF, WebP, BMP, TIFF or PNM signature)"
    marker = _END_MARKERS.get(kind)
    if marker is not None and marker not in tail:
        return f"is a truncated {kind.upper()} file (no end marker)"
    return None


def decode(path: str, channels: int) -> torch.Tensor:
    """`path` as uint8 `(channels, H, W)`: torchvision.io, else PIL; BadImage names the file."""
    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    try:
        # torchvision 0.29 deprecates its decoders for TorchCodec's (not a dependency of kdexp): they
        # are still the fast JPEG/PNG path to a uint8 tensor; its warning per file is noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(path, mode=mode)
    except (RuntimeError, ValueError):
        pass
    try:
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            return F.pil_to_tensor(img)
    except (OSError, ValueError, SyntaxError) as err:
        raise BadImage(f"{path} cannot be decoded as an image ({' '.join(str(err).split())})") from None


def resized_crop_box(height: int, width: int, generator: torch.Generator,
                     scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box `(top, left, h, w)`, drawn on `generator`: ten tries
    at a random area and aspect ratio, then the central crop at the nearest allowed ratio."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class Recipe:
    """The train and eval transforms for `size`-pixel square images."""

    def __init__(self, size: int):
        self.size = size
        self.resize = int(round(size / 0.875))

    def train(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        top, left, h, w = resized_crop_box(img.shape[-2], img.shape[-1], generator)
        out = F.resized_crop(img, top, left, h, w, [self.size, self.size], antialias=True)
        return F.horizontal_flip(out) if torch.rand(1, generator=generator).item() < 0.5 else out

    def eval(self, img: torch.Tensor) -> torch.Tensor:
        return F.center_crop(F.resize(img, self.resize, antialias=True), [self.size, self.size])
