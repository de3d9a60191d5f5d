"""What the feature methods share: their config keys (which layer of each model, the weight) and the
resolution of a layer left unset to the model's default (`features.default_layer`)."""

from __future__ import annotations

from typing import Optional

from kdexp.distill.features import default_layer
from kdexp.config.checks import require
from kdexp.distill.methods.base import FeatureMethod


class LayerPairMethod(FeatureMethod):
    """A feature method on one student layer and one teacher layer, named by module path
    (`hint.student`, `hint.teacher`; null = the model's last stage)."""

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        require(not cfg.trainer.compile, "trainer.compile", True,
                f"hint={cls.name} takes features through forward hooks, which a compiled model skips; "
                f"use trainer.compile=false")

    def __init__(self, cfg, loss_cfg):
        super().__init__(cfg, loss_cfg)
        self.student_layer: Optional[str] = cfg.student
        self.teacher_layer: Optional[str] = cfg.teacher

    def resolve(self, student, teacher) -> None:
        self.student_layer = self.student_layer or default_layer(student)
        self.teacher_layer = self.teacher_layer or default_layer(teacher)

    def student_layers(self) -> list[str]:
        return [self.student_layer]

    def teacher_layers(self) -> list[str]:
        return [self.teacher_layer]

    def pair(self, student, teacher):
        return student.features[self.student_layer], teacher.features[self.teacher_layer].detach()
