"""What the methods on feature maps share (NST and KDSVD need them: their maths is over spatial
positions; VID pools them): refusing a model that has none before any work, a layer that gives none
at setup, pooling two maps to one size, and "every stage" as a recipe's default layers
(RepDistiller's `feat[1:-1]`: each stage after the stem).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdexp.config.checks import ConfigError, require

# Models whose every layer output is a vector.
VECTOR_MODELS = ("mlp",)
# `default_stages` for "every stage of the model" (pick_stages keeps the indices a model has).
EVERY_STAGE = tuple(range(-16, 0))


def refuse_vector_models(cfg, method: str) -> None:
    """A one-line ConfigError when the student or the teacher is a model without feature maps."""
    for role in ("student", "teacher"):
        require(cfg[role].name not in VECTOR_MODELS, f"model@{role}", cfg[role].name,
                f"hint={method} needs feature maps, and an {cfg[role].name} has none; use a cnn or resnet "
                f"{role} (e.g. model@{role}=cnn)")


def require_maps(method: str, role: str, layer: str, f: torch.Tensor) -> None:
    """A one-line ConfigError when the feature `f` taken at `layer` is not a (N, C, H, W) map."""
    if f.dim() != 4:
        raise ConfigError(f"hint.{role}={layer!r} gives features of shape {tuple(f.shape[1:])}; "
                          f"hint={method} needs feature maps (C, H, W): choose a convolutional layer")


def require_pair_maps(method, student, teacher) -> None:
    """`require_maps` on both sides of each layer pair of `method` (a `LayerPairMethod`), on the
    probe batch's `Outputs`."""
    for (f_s, f_t), s, t in zip(method.pairs(student, teacher), method.student_names, method.teacher_names):
        require_maps(method.name, "student", s, f_s)
        require_maps(method.name, "teacher", t, f_t)


def common_size(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps average-pooled to the smaller height and width (the references pool the larger)."""
    size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
    if tuple(f_s.shape[2:]) != size:
        f_s = F.adaptive_avg_pool2d(f_s, size)
    if tuple(f_t.shape[2:]) != size:
        f_t = F.adaptive_avg_pool2d(f_t, size)
    return f_s, f_t


def as_map(f: torch.Tensor) -> torch.Tensor:
    """A vector feature (N, C) as a 1x1 map (N, C, 1, 1); maps unchanged."""
    return f[:, :, None, None] if f.dim() == 2 else f

