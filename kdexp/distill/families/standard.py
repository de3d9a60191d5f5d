"""`loss=standard`: one frozen teacher distilled into one student, as in the source article, through
the config's logit method (`kd=`, default hinton: alpha · CE + (1 − alpha) · T² · KL) and feature method
(`hint=`, default none): see kdexp/distill/methods/ and kdexp/distill/compose.py."""

from __future__ import annotations

from dataclasses import dataclass

from kdexp.distill.families.base import Family, Outcome, register
from kdexp.distill.phase import Clock, Phase


@dataclass
class StandardLossConfig:
    """Hinton KD: alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T)."""

    name: str = "standard"
    temperature: float = 4.0
    alpha: float = 0.1


@register
class Standard(Family):
    name = "standard"
    schema = StandardLossConfig
    composes_methods = True
    uses_teacher = True
    method_keys = ("temperature", "alpha")  # kd=hinton's T and alpha

    def run(self) -> Outcome:
        ctx, cfg = self.ctx, self.ctx.cfg
        teacher, teacher_hist = ctx.teacher(cfg.teacher, "teacher")
        baseline_hist = ctx.baseline(cfg.student, "student") if cfg.trainer.baseline else None
        student = ctx.build(cfg.student, "student")
        clock = Clock()
        with self.composed_loss(student, teacher, "teacher", clock) as composed:
            self.method_stages(composed, "teacher")
            phase = Phase(
                name="student",
                models={"student": student},
                step_loss=composed.step_loss,
                predict=lambda x: {"student": student(x)},
                epochs=cfg.trainer.epochs,
                seed=ctx.seed("student"),
                augment=ctx.augment_students,
                parts=composed.parts,
                clock=clock,
            )
            hist = ctx.train(phase)
        return self.teacher_student_outcome(
            teacher, teacher_hist.last("teacher/test_acc"), student, hist.last("student/test_acc"),
            baseline_hist.last("baseline/test_acc") if baseline_hist else None,
            ctx.val_acc(hist, "student"),
        )
