"""`loss=multi_teacher`: several frozen teachers (any architectures, any number) distilled into one
student through an aggregate of their temperature-softened distributions (`losses.multi_teacher`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from kdexp.distill.functional import AGGREGATES, multi_teacher
from kdexp.distill.families.base import Family, Outcome, register
from kdexp.models.factory import count_params, describe
from kdexp.config.checks import require
from kdexp.distill.phase import Phase


@dataclass
class MultiTeacherLossConfig:
    """Several frozen teachers distilled into one student through an aggregate of their softened
    distributions. `teachers`: model config names of conf/model/ (or mappings)."""

    name: str = "multi_teacher"
    temperature: float = 4.0
    alpha: float = 0.1
    teachers: list[Any] = field(default_factory=lambda: ["cnn", "cnn"])
    # mean | weighted (fixed `weights`, one per teacher, normalised) | confidence (per sample).
    aggregate: str = "mean"
    weights: Optional[list[float]] = None


@register
class MultiTeacher(Family):
    name = "multi_teacher"
    schema = MultiTeacherLossConfig
    model_lists = ("teachers",)


    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        loss = cfg.loss
        require(len(loss.teachers) >= 1, "loss.teachers", [], "at least one model config, e.g. loss.teachers=[cnn,cnn]")
        require(loss.aggregate in AGGREGATES, "loss.aggregate", loss.aggregate, f"allowed: {', '.join(AGGREGATES)}")
        if loss.aggregate == "weighted":
            require(loss.weights is not None, "loss.weights", None,
                    f"loss.aggregate=weighted needs one weight per teacher ({len(loss.teachers)}), "
                    f"e.g. loss.weights=[{','.join(['1'] * len(loss.teachers))}]")
        if loss.weights is not None:
            w = list(loss.weights)
            require(len(w) == len(loss.teachers), "loss.weights", w,
                    f"needs exactly one weight per teacher ({len(loss.teachers)} teachers)")
            require(all(v >= 0 for v in w) and sum(w) > 0, "loss.weights", w,
                    "weights must be >= 0 with a positive sum")

    @classmethod
    def pair_labels(cls, cfg) -> tuple[str, str]:
        return "+".join(describe(t) for t in cfg.loss.teachers), describe(cfg.student)

    def run(self) -> Outcome:
        ctx, cfg, loss_cfg = self.ctx, self.ctx.cfg, self.cfg
        teachers, teacher_accs = [], []
        for i, teacher_cfg in enumerate(loss_cfg.teachers):
            teacher, hist = ctx.teacher(teacher_cfg, f"teacher{i}")
            teachers.append(teacher)
            teacher_accs.append(hist.last(f"teacher{i}/test_acc"))
        baseline_hist = ctx.baseline(cfg.student, "student") if cfg.trainer.baseline else None
        student = ctx.build(cfg.student, "student")
        logit_fns = [ctx.frozen_logits(t, f"teacher{i}") for i, t in enumerate(teachers)]
        T, alpha, aggregate = loss_cfg.temperature, loss_cfg.alpha, loss_cfg.aggregate
        weights = list(loss_cfg.weights) if aggregate == "weighted" else None
        phase = Phase(
            name="student",
            models={"student": student},
            step_loss=lambda x, y, idx: multi_teacher(student(x), [f(x, idx) for f in logit_fns], y, T, alpha,
                                                 aggregate, weights),
            predict=lambda x: {"student": student(x)},
            epochs=cfg.trainer.epochs,
            seed=ctx.seed("student"),
            augment=ctx.augment_students,
        )
        hist = ctx.train(phase)

        student_acc = hist.last("student/test_acc")
        sp = count_params(student)
        metrics: dict[str, float] = {"student_acc": student_acc, "student_params": sp}
        rows = []
        for i, (teacher_cfg, teacher, acc) in enumerate(zip(loss_cfg.teachers, teachers, teacher_accs)):
            tp = count_params(teacher)
            metrics.update({f"teacher{i}_acc": acc, f"teacher{i}_params": tp})
            rows.append((f"teacher{i} {ctx.describe(teacher_cfg)} accuracy", f"{acc:.2f} %  ({tp:,} params)"))
        # The teachers' ensemble at T = 1: mean of probabilities (fixed weights for `weighted`; the
        # per-sample `confidence` weights need the labels, so that ensemble is the plain mean).
        metrics.update(self.ensemble_accs(teachers, "ensemble", weights))
        rows.append((f"ensemble of the {len(teachers)} teachers", f"{metrics['ensemble_acc']:.2f} %"))
        if baseline_hist is not None:
            base = baseline_hist.last("baseline/test_acc")
            metrics.update(baseline_acc=base, kd_gain=student_acc - base)
            rows.append(("baseline (student alone) accuracy", f"{base:.2f} %"))
        rows.append((f"student {ctx.describe(cfg.student)} accuracy ({aggregate} of {len(teachers)} teachers)",
                     f"{student_acc:.2f} %  ({sp:,} params)"))
        if baseline_hist is not None:
            rows.append(("KD gain", f"{metrics['kd_gain']:+.2f} points"))
        objective = "student_acc"
        val = ctx.val_acc(hist, "student")
        if val is not None:
            metrics["student_val_acc"] = val
            objective = "student_val_acc"
        return Outcome(metrics, rows, objective, deploy={"student": student})
