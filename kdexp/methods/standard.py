"""`loss=standard`: one frozen teacher distilled into one student, as in the source article, through
the config's logit term (`kd=`, default hinton: alpha · CE + (1 − alpha) · T² · KL) and feature term
(`hint=`, default none): see kdexp/terms/ and `methods/distill.py`."""

from __future__ import annotations

from dataclasses import dataclass

from kdexp.methods.base import Method, Outcome, register
from kdexp.methods.distill import Distiller
from kdexp.train import Clock, Phase


@dataclass
class StandardLossConfig:
    """Hinton KD: alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T)."""

    name: str = "standard"
    temperature: float = 4.0
    alpha: float = 0.1


@register
class Standard(Method):
    name = "standard"
    schema = StandardLossConfig
    composes_terms = True
    uses_teacher = True

    def run(self) -> Outcome:
        ctx, cfg = self.ctx, self.ctx.cfg
        teacher, teacher_hist = ctx.teacher(cfg.teacher, "teacher")
        baseline_hist = ctx.baseline(cfg.student, "student") if cfg.trainer.baseline else None
        student = ctx.build(cfg.student, "student")
        clock = Clock()
        with Distiller(ctx, student, teacher, "teacher", clock) as distiller:
            phase = Phase(
                name="student",
                models={"student": student},
                loss=distiller.loss,
                predict=lambda x: {"student": student(x)},
                epochs=cfg.trainer.epochs,
                seed=ctx.seed("student"),
                augment=ctx.augment_students,
                parts=distiller.parts,
                clock=clock,
            )
            hist = ctx.train(phase)
        return self.teacher_student_outcome(
            teacher, teacher_hist.last("teacher/test_acc"), student, hist.last("student/test_acc"),
            baseline_hist.last("baseline/test_acc") if baseline_hist else None,
            ctx.val_acc(hist, "student"),
        )
