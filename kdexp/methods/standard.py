"""`loss=standard`: Hinton KD from one frozen teacher into one student, as in the source article."""

from __future__ import annotations

from kdexp.losses import hinton
from kdexp.methods.base import Method, Outcome, register
from kdexp.train import Phase


@register
class Standard(Method):
    name = "standard"

    def run(self) -> Outcome:
        ctx, cfg = self.ctx, self.ctx.cfg
        teacher, teacher_hist = ctx.teacher(cfg.teacher, "teacher")
        baseline_hist = ctx.baseline(cfg.student, "student") if cfg.trainer.baseline else None
        student = ctx.build(cfg.student, "student")
        teacher_logits = ctx.frozen_logits(teacher, "teacher")
        T, alpha = self.cfg.temperature, self.cfg.alpha
        phase = Phase(
            name="student",
            models={"student": student},
            loss=lambda x, y, idx: hinton(student(x), teacher_logits(x, idx), y, T, alpha),
            predict=lambda x: {"student": student(x)},
            epochs=cfg.trainer.epochs,
            seed=ctx.seed("student"),
            augment=ctx.augment_students,
        )
        hist = ctx.train(phase)
        return self.teacher_student_outcome(
            teacher, teacher_hist.last("teacher/test_acc"), student, hist.last("student/test_acc"),
            baseline_hist.last("baseline/test_acc") if baseline_hist else None,
            ctx.val_acc(hist, "student"),
        )
