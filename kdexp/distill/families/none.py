"""`loss=none`: the student trained on the labels alone (no teacher): the reference point."""

from __future__ import annotations

from dataclasses import dataclass

from kdexp.distill.families.base import Family, Outcome, register
from kdexp.models.factory import describe


@dataclass
class NoneLossConfig:
    """The student trained on labels alone."""

    name: str = "none"
    temperature: float = 1.0
    alpha: float = 1.0


@register
class NoDistillation(Family):
    name = "none"
    schema = NoneLossConfig
    @classmethod
    def unused_keys(cls, cfg) -> dict[str, str]:
        # Accepted, so that one sweep may set them across families (loss=none,standard loss.alpha=...),
        # but meaningless without a teacher.
        return {"temperature": "with loss=none (no teacher)", "alpha": "with loss=none (no teacher)"}

    @classmethod
    def pair_labels(cls, cfg) -> tuple[str, str]:
        return "(none)", describe(cfg.student)

    def run(self) -> Outcome:
        """The student alone is the baseline of every other family's run with the same student,
        data, seed and schedule: the same store entry serves both, so neither trains it twice."""
        ctx, cfg = self.ctx, self.ctx.cfg
        student, hist = ctx.on_labels(cfg.student, "student", "student", cfg.trainer.epochs, ctx.augment_students)
        return self.teacher_student_outcome(None, None, student, hist.last("student/test_acc"), None,
                                            ctx.val_acc(hist, "student"))
