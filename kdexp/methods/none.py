"""`loss=none`: the student trained on the labels alone (no teacher): the reference point."""

from __future__ import annotations

from dataclasses import dataclass

from kdexp.losses import labels_only
from kdexp.methods.base import Method, Outcome, register
from kdexp.models import describe
from kdexp.train import Phase


@dataclass
class NoneLossConfig:
    """The student trained on labels alone."""

    name: str = "none"
    temperature: float = 1.0
    alpha: float = 1.0


@register
class NoDistillation(Method):
    name = "none"
    schema = NoneLossConfig

    @classmethod
    def roles(cls, cfg) -> tuple[str, str]:
        return "(none)", describe(cfg.student)

    def run(self) -> Outcome:
        ctx, cfg = self.ctx, self.ctx.cfg
        student = ctx.build(cfg.student, "student")
        phase = Phase(
            name="student",
            models={"student": student},
            loss=lambda x, y, idx: labels_only(student(x), y),
            predict=lambda x: {"student": student(x)},
            epochs=cfg.trainer.epochs,
            seed=ctx.seed("student"),
            augment=ctx.augment_students,
        )
        hist = ctx.train(phase)
        return self.teacher_student_outcome(None, None, student, hist.last("student/test_acc"), None,
                                            ctx.val_acc(hist, "student"))
