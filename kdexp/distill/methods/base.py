"""What every distillation method shares: the `Outputs` it sees, the `Method` base class, its checks.

A method is an `nn.Module` (so the trainable parts it owns, a connector or a temperature, are its
parameters: the phase optimises and checkpoints them). It is built from its config section (`kd` or
`hint`) and the family's `loss` section, asks for the student's and teacher's features by module
name, and maps a step to named loss terms:

    method(batch, clock, student, teacher) -> {name: tensor}

`batch` = (x, y, idx), `clock` = epoch/step/epochs (`distill.phase.Clock`), `student` / `teacher` =
`Outputs` (logits, and the features asked for). A logit method (`kd=`) returns the family's whole
loss under `loss` (with `ce` and its own parts); a feature method (`hint=`) returns its value under
`hint`, which the composed loss (kdexp/distill/compose.py) adds with the method's `weight`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from kdexp.config.registry import HINT_METHODS, KD_METHODS
from kdexp.config.checks import require_temperature, require_weight


@dataclass
class Outputs:
    """A model's logits for a batch and the features (by module name) a method asked for."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TrainingSet:
    """What a method may know of the training split, for state sized by the data set (CRD's memory
    bank: one row per sample, addressed by the batch's `idx`): its size, and its labels in index
    order, read only when a method asks (`labels()`: one pass over the split)."""

    size: int
    labels: Callable[[], torch.Tensor]


@dataclass
class MethodStage:
    """A stage a method trains before distillation (FT's paraphraser; AB's and FSP's initialisation
    of the student): the family trains it as a phase of its own (`name`), through the same loop, so
    it is logged, checkpointed and resumed like any other. `trains`: the modules it optimises (the
    student under "student", or the method's own parts); `loss(batch, clock, student, teacher)`:
    named loss terms, the total under `loss`, from the same `Outputs` a method's forward sees
    (`student` is None when `teacher_only`). A `teacher_only` stage depends on the frozen teacher
    alone: a sweep that repeats it loads it from the model store instead of training it again;
    `identity` names the settings it depends on (part of its model-store key, with the teacher's
    key, the epochs, seeds and optimiser), so that a sweep over anything else reuses it."""

    name: str
    epochs: int
    trains: dict[str, nn.Module]
    loss: Callable[..., dict[str, torch.Tensor]]
    teacher_only: bool = False
    identity: dict = field(default_factory=dict)


class Method(nn.Module):
    name: ClassVar[str] = ""
    schema: ClassVar[type]
    # Keys of the schema that are temperatures / non-negative weights: checked by `check`.
    # Bumped when the method's recipe changes what a given config computes (FitNets' regressor and
    # default layer: 2), so that a run of the earlier recipe is not taken for this one (run_key).
    revision: ClassVar[int] = 1
    temperatures: ClassVar[tuple[str, ...]] = ()
    weights: ClassVar[tuple[str, ...]] = ()
    # Keys of the family's `loss` section this method reads (kd=hinton: temperature and alpha).
    # One owner per setting: any other family key it would shadow is ignored with this method,
    # and `instead_of` names the method's own key to set instead (`temperature` → `kd.temperature`).
    family_keys: ClassVar[tuple[str, ...]] = ()
    instead_of: ClassVar[dict[str, str]] = {}

    def __init__(self, cfg, loss_cfg):
        super().__init__()
        self.cfg = cfg
        self.loss_cfg = loss_cfg
        # The training split, set by whoever builds the method before `setup` (the composed loss,
        # the pre-flight check); None where there is none.
        self.train_set: TrainingSet | None = None

    @classmethod
    def section(cls) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def typed(cls, section):
        """The section once merged into `schema` (validation calls it before any `check`)."""
        return section

    @classmethod
    def check(cls, cfg) -> None:
        """Cross-field checks on the whole typed config (ConfigError, one line)."""
        own = cfg[cls.section()]
        for key in cls.temperatures:
            require_temperature(f"{cls.section()}.{key}", own[key])
        for key in cls.weights:
            require_weight(f"{cls.section()}.{key}", own[key])

    @classmethod
    def plain(cls, cfg) -> bool:
        """Whether this method (with these settings) computes what kdexp computed before methods
        existed (Hinton on raw logits, no feature method): the only choice of a family that does
        not compose methods."""
        return False

    # --- what the method needs ---
    def student_layers(self) -> list[str]:
        return []

    def teacher_layers(self) -> list[str]:
        return []

    def resolve(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Fix layer names that default to the model's own (called once the models exist)."""

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        """Build trainable parts and state from a probe batch's shapes and `self.train_set` (called
        once, before training). State the loop must checkpoint is a parameter or a persistent buffer
        (`register_buffer`): the phase saves and restores the method's `state_dict`."""

    def stages(self, student: nn.Module) -> list[MethodStage]:
        """The stages this method trains before distillation, in order (called after `setup`,
        with the student model a stage may train)."""
        return []

    def forward(self, batch, clock, student: Outputs, teacher: Outputs) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


class LogitMethod(Method):
    """A `kd=` method: the family's whole loss from the student's and the teacher's logits."""

    @classmethod
    def section(cls) -> str:
        return "kd"


class FeatureMethod(Method):
    """A `hint=` method: a distance between a student and a teacher feature, added with `weight`."""

    weights = ("weight",)

    @classmethod
    def section(cls) -> str:
        return "hint"


def is_plain(cfg: Any) -> bool:
    """Whether the config's kd and hint methods are the ones every family supports."""
    return KD_METHODS[cfg.kd.name].plain(cfg.kd) and HINT_METHODS[cfg.hint.name].plain(cfg.hint)
