"""What the feature methods share: their config keys (which layers of each model, the weight) and the
resolution of layers left unset to the method's default stages (`features.stage_names`).

`hint.student` / `hint.teacher` name one layer or a list of layers (module paths; `:input` for a
module's input), paired in order: AT sums over every stage pair, VID and KDSVD take several. Left
unset (null), they are the stages the method's recipe uses (`default_stages`: indices into the
model's stages, negative from the end).

Where the two models have different numbers of stages, the references pair them as Python's `zip`
does: RepDistiller (AT, NST, KDSVD, VID, AB, FSP: `zip(feat_s[1:-1], feat_t[1:-1])`) and mdistiller's
AT, NST, KDSVD, VID keep the first pairs; mdistiller's OFD (`_align_list`: `l[-min_len:]`) and
ReviewKD (its fusion modules built from the deepest level) keep the last. `paired` does either.
"""

from __future__ import annotations

from typing import ClassVar

from omegaconf import ListConfig

from kdexp.config.checks import ConfigError, require
from kdexp.distill.features import stage_names
from kdexp.distill.methods.base import FeatureMethod


def _as_list(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    return [str(value)]


def pick_stages(names: list[str], indices: tuple[int, ...]) -> list[str]:
    """`names[i]` for each recipe index that the model has (a 3-stage recipe on a 2-stage MLP keeps
    the indices that exist), in order, without repeats."""
    picked = [names[i] for i in indices if -len(names) <= i < len(names)]
    return list(dict.fromkeys(picked)) or [names[-1]]


def paired(student: list[str], teacher: list[str], last: bool = False) -> tuple[list[str], list[str]]:
    """The two lists cut to the shorter one's length, keeping the first pairs (`zip`, RepDistiller)
    or, with `last`, the last ones (mdistiller's OFD and ReviewKD)."""
    count = min(len(student), len(teacher))
    if last:
        return student[len(student) - count:], teacher[len(teacher) - count:]
    return student[:count], teacher[:count]


class LayerPairMethod(FeatureMethod):
    """A feature method on pairs of (student layer, teacher layer), named by module path."""

    # The recipe's stages when hint.student / hint.teacher are null: (-1,) = the last stage.
    default_stages: ClassVar[tuple[int, ...]] = (-1,)
    # Whether the method takes exactly one pair (FitNets' hint layer) or any number (AT, VID, ...).
    single: ClassVar[bool] = True

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        require(not cfg.trainer.compile, "trainer.compile", True,
                f"hint={cls.name} takes features through forward hooks, which a compiled model skips; "
                f"use trainer.compile=false")
        student, teacher = _as_list(cfg.hint.student), _as_list(cfg.hint.teacher)
        if student is not None and teacher is not None and len(student) != len(teacher):
            raise ConfigError(f"hint.student names {len(student)} layers and hint.teacher {len(teacher)}; "
                              f"hint={cls.name} pairs them in order: give as many of each")
        for key, names in (("hint.student", student), ("hint.teacher", teacher)):
            if cls.single and names is not None and len(names) != 1:
                raise ConfigError(f"{key}={names} is not allowed; hint={cls.name} takes one layer per model")

    def __init__(self, cfg, loss_cfg):
        super().__init__(cfg, loss_cfg)
        self.student_names: list[str] | None = _as_list(cfg.student)
        self.teacher_names: list[str] | None = _as_list(cfg.teacher)

    def resolve(self, student, teacher) -> None:
        s_default = pick_stages(stage_names(student), self.default_stages)
        t_default = pick_stages(stage_names(teacher), self.default_stages)
        # Both unset: as many pairs as the shallower model has stages, the first ones (`zip`); one
        # side set: as many of the other side's stages, again from the first.
        count = len(self.student_names or self.teacher_names or []) or min(len(s_default), len(t_default))
        self.student_names = self.student_names or s_default[:count]
        self.teacher_names = self.teacher_names or t_default[:count]
        if len(self.student_names) != len(self.teacher_names):
            raise ConfigError(f"hint.student={self.student_names} and hint.teacher={self.teacher_names} differ "
                              f"in length; hint={self.name} pairs them in order: set both")

    @property
    def student_layer(self) -> str:
        return self.student_names[0]

    @property
    def teacher_layer(self) -> str:
        return self.teacher_names[0]

    def student_layers(self) -> list[str]:
        return list(self.student_names)

    def teacher_layers(self) -> list[str]:
        return list(self.teacher_names)

    def pairs(self, student, teacher) -> list[tuple]:
        """`(f_s, f_t)` for each layer pair; the teacher's side detached."""
        return [(student.features[s], teacher.features[t].detach())
                for s, t in zip(self.student_names, self.teacher_names)]

    def pair(self, student, teacher):
        """The first pair (a single-pair method's only one)."""
        return self.pairs(student, teacher)[0]
