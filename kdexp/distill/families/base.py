"""What every loss family shares: the `Family` base class, its `Outcome`, and the registry.

A family is one module: its config schema (`schema`, the `loss` section), its cross-field checks
(`check`), what the tags call its teacher and student (`pair_labels`), whether it composes the `kd=` /
`hint=` terms (`composes_methods`, refined per config by `composes`), and `run`. It registers by
name in `registry.FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from omegaconf import OmegaConf
from torch import nn

from kdexp.config.checks import require
from kdexp.config.models import model_list
from kdexp.config.registry import FAMILIES, KD_METHODS
from kdexp.distill.compose import ComposedLoss, training_set
from kdexp.distill.functional import ensemble_probs
from kdexp.distill.methods import is_plain
from kdexp.distill.phase import Clock, Phase
from kdexp.models.factory import count_params, describe

if TYPE_CHECKING:
    from kdexp.run.context import Context


@dataclass
class Outcome:
    """What a family reports: final metrics, summary-table rows, the objective and the model to ship."""

    metrics: dict[str, float]
    rows: list[tuple[str, str]]
    objective: str
    deploy: dict[str, nn.Module] = field(default_factory=dict)


class Family:
    """A loss family. `run` trains what the family trains (through `ctx.train`), asks the
    context for what it needs frozen (teachers, baselines), and returns an `Outcome`."""

    name: ClassVar[str] = ""
    schema: ClassVar[type]
    # Whether the kd= and hint= methods apply; a family that does not compose them refuses any but
    # the plain ones (kd=hinton, hint=none) in one line.
    composes_methods: ClassVar[bool] = False

    @classmethod
    def composes(cls, cfg) -> bool:
        """Whether the kd= and hint= methods apply to this family with these settings."""
        return cls.composes_methods

    @classmethod
    def method_teacher(cls, cfg):
        """The model config the terms distil from (for the fit checks of their layers)."""
        return cfg.teacher

    # Whether the family distils from `cfg.teacher` (so that `teacher.checkpoint` means something).
    uses_teacher: ClassVar[bool] = False

    # Keys of the `loss` section that hold lists of model configs (`loss.teachers`, `loss.peers`).
    model_lists: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def typed(cls, section):
        """The `loss` section once merged into `schema`, with what a schema cannot type typed
        (each of `model_lists` as typed model configs); validation calls it before any `check`."""
        for key in cls.model_lists:
            section[key] = model_list(f"loss.{key}", section[key])
        return section

    @classmethod
    def check(cls, cfg) -> None:
        """Cross-field checks on the whole typed config (ConfigError, one line); they read it, never write it."""
        if cfg.teacher.get("checkpoint") and not cls.uses_teacher:
            users = ", ".join(f"loss={n}" for n, c in FAMILIES.items() if c.uses_teacher)
            require(False, "teacher.checkpoint", cfg.teacher.checkpoint,
                    f"loss={cls.name} has no `teacher` to import; allowed: null, or {users} "
                    f"(loss=multi_teacher: loss.teachers=[{{name: ..., checkpoint: ...}}])")
        if not cls.composes(cfg) and not is_plain(cfg):
            key = "hint" if is_plain_kd(cfg) else "kd"
            composing = ", ".join(f"loss={n}" for n, c in FAMILIES.items() if c.composes_methods)
            require(False, key, OmegaConf.to_container(cfg[key]), f"loss={cls.name} does not compose distillation methods "
                    f"here (only {composing} does); use kd=hinton hint=none with loss={cls.name}")

    # Keys of the `loss` section that the family hands to the logit method where it composes
    # methods (kd=hinton reads loss.temperature and loss.alpha; kd=dkd reads neither).
    method_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def unused_keys(cls, cfg) -> dict[str, str]:
        """Keys of the `loss` section this config of the family does not read → why (e.g. a mode
        that does not use them). The base family reads all of them."""
        return {}

    @classmethod
    def ignored(cls, cfg) -> dict[str, str]:
        """The settings a run of `cfg` ignores → why, in a phrase that ends the one-line refusal
        (`loss.temperature has no effect with kd=dkd; use kd.temperature`). A key ending in `.`
        stands for its whole section. They are neither params of the run nor part of its identity."""
        ignored = {f"loss.{key}": why for key, why in cls.unused_keys(cfg).items()}
        if not cls.composes(cfg):
            why = f"with loss={cls.name}, which composes no kd= or hint= method"
            return {**ignored, "kd.": why, "hint.": why}
        method = KD_METHODS[cfg.kd.name]
        for key in cls.method_keys:
            if key not in method.family_keys:
                own = ", ".join(f"kd.{k}" for k in method.schema.__dataclass_fields__ if k != "name")
                use = method.instead_of.get(key) or f"kd={method.name}'s own keys: {own or 'none'}"
                ignored[f"loss.{key}"] = f"with kd={method.name}; use {use}"
        return ignored

    @classmethod
    def pair_labels(cls, cfg) -> tuple[str, str]:
        """(teacher, student) as the family uses them, for tags and run names."""
        return describe(cfg.teacher), describe(cfg.student)

    def __init__(self, ctx: "Context"):
        self.ctx = ctx
        self.cfg = ctx.cfg.loss

    def run(self) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- helpers the families share ---
    def teacher_student_outcome(self, teacher: nn.Module | None, teacher_acc: float | None,
                                student: nn.Module, student_acc: float, baseline_acc: float | None,
                                val_acc: float | None = None) -> Outcome:
        """Final metrics and rows for the families that distil frozen teacher(s) into one student."""
        ctx = self.ctx
        sp = count_params(student)
        metrics: dict[str, float] = {"student_acc": student_acc, "student_params": sp}
        rows = []
        if teacher is not None:
            tp = count_params(teacher)
            metrics.update(teacher_acc=teacher_acc, teacher_params=tp, compression=tp / sp)
            rows.append((f"teacher {ctx.describe(ctx.cfg.teacher)} accuracy", f"{teacher_acc:.2f} %"))
        if baseline_acc is not None:
            metrics.update(baseline_acc=baseline_acc, kd_gain=student_acc - baseline_acc)
            rows.append(("baseline (student alone) accuracy", f"{baseline_acc:.2f} %"))
        rows.append((f"student {ctx.describe(ctx.cfg.student)} accuracy ({self.name})", f"{student_acc:.2f} %"))
        if baseline_acc is not None:
            rows.append(("KD gain", f"{student_acc - baseline_acc:+.2f} points"))
        if teacher is not None:
            rows.append(("parameters teacher / student", f"{tp:,} / {sp:,}  ({tp / sp:.1f}x smaller)"))
        else:
            rows.append(("parameters student", f"{sp:,}"))
        objective = "student_acc"
        if val_acc is not None:
            metrics["student_val_acc"] = val_acc
            objective = "student_val_acc"
        return Outcome(metrics, rows, objective, deploy={"student": student})

    def ensemble_accs(self, models: list[nn.Module], name: str = "ensemble", weights=None) -> dict[str, float]:
        """`{name}_acc` (and `{name}_val_acc` with a validation split) of the ensemble that averages
        the members' softmax probabilities (weighted by `weights` when given), in float32."""
        predict = lambda x: {name: ensemble_probs([m(x) for m in models], weights)}  # noqa: E731
        members = {f"{name}{i}": m for i, m in enumerate(models)}
        accs = self.ctx.evaluate(predict, members, precision="32")
        return {f"{name}_{'acc' if split == 'test' else 'val_acc'}": acc[name] for split, acc in accs.items()}

    def composed_loss(self, student: nn.Module, teacher: nn.Module, teacher_role: str, clock: Clock) -> ComposedLoss:
        """The config's kd= and hint= methods between `student` and the frozen `teacher` (served
        by the context under `teacher_role`, whose cached logits it may use)."""
        ctx = self.ctx
        return ComposedLoss(ctx.cfg, student, teacher, lambda: ctx.frozen_logits(teacher, teacher_role),
                            ctx.probe_batch(), ctx.seed("student/terms"), ctx.device, clock,
                            training_set(ctx.source))

    def method_stages(self, composed: ComposedLoss, teacher_role: str, prefix: str = "") -> None:
        """Train the stages the methods declare before distillation (FT's paraphraser, AB's and
        FSP's initialisation), each as a phase of its own through `ctx.train`: logged, checkpointed
        and resumed like any other, named `prefix + stage name` (one per generation: `gen2_fsp_init`).
        A stage that depends on the frozen teacher alone comes from the model store when a sweep
        repeats it, and is frozen once trained, like the teacher."""
        ctx = self.ctx
        for stage in composed.stages():
            clock, name = Clock(), prefix + stage.name
            phase = Phase(name=name, models=dict(stage.trains), step_loss=composed.stage_loss(stage, clock),
                          predict=lambda x: {}, epochs=stage.epochs, seed=ctx.seed(name),
                          augment=ctx.augment_students, clock=clock)
            if stage.teacher_only:
                ctx.teacher_stage(phase, teacher_role, {**stage.identity, "init_seed": ctx.seed("student/terms")})
                for module in stage.trains.values():
                    module.requires_grad_(False)
            else:
                ctx.train(phase)


def is_plain_kd(cfg) -> bool:
    return KD_METHODS[cfg.kd.name].plain(cfg.kd)


# Class decorator: makes a family available as `loss=<cls.name>`.
register = FAMILIES.register
