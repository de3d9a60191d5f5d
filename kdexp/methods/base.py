"""What every loss family shares: the `Method` base class, its `Outcome`, and the registry.

A family is one module: its config schema (`schema`, the `loss` section), its cross-field checks
(`check`), what the tags call its teacher and student (`roles`), whether it composes the `kd=` /
`hint=` terms (`composes_terms`, refined per config by `composes`), and `run`. It registers by
name in `registry.FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from omegaconf import OmegaConf
from torch import nn

from kdexp.models import count_params, describe
from kdexp.registry import FAMILIES, KD_TERMS
from kdexp.schema import require
from kdexp.terms import is_plain

if TYPE_CHECKING:
    from kdexp.experiment import Context


@dataclass
class Outcome:
    """What a family reports: final metrics, summary-table rows, the objective and the model to ship."""

    metrics: dict[str, float]
    rows: list[tuple[str, str]]
    objective: str
    deploy: dict[str, nn.Module] = field(default_factory=dict)


class Method:
    """A loss family. `run` trains what the family trains (through `ctx.train`), asks the
    context for what it needs frozen (teachers, baselines), and returns an `Outcome`."""

    name: ClassVar[str] = ""
    schema: ClassVar[type]
    # Whether the kd= and hint= terms apply; a family that does not compose them refuses any but
    # the plain ones (kd=hinton, hint=none) in one line.
    composes_terms: ClassVar[bool] = False

    @classmethod
    def composes(cls, cfg) -> bool:
        """Whether the kd= and hint= terms apply to this family with these settings."""
        return cls.composes_terms

    @classmethod
    def term_teacher(cls, cfg):
        """The model config the terms distil from (for the fit checks of their layers)."""
        return cfg.teacher

    # Whether the family distils from `cfg.teacher` (so that `teacher.checkpoint` means something).
    uses_teacher: ClassVar[bool] = False

    @classmethod
    def check(cls, cfg) -> None:
        """Cross-field checks on the whole typed config (ConfigError, one line)."""
        if cfg.teacher.get("checkpoint") and not cls.uses_teacher:
            users = ", ".join(f"loss={n}" for n, c in FAMILIES.items() if c.uses_teacher)
            require(False, "teacher.checkpoint", cfg.teacher.checkpoint,
                    f"loss={cls.name} has no `teacher` to import; allowed: null, or {users} "
                    f"(loss=multi_teacher: loss.teachers=[{{name: ..., checkpoint: ...}}])")
        if not cls.composes(cfg) and not is_plain(cfg):
            key = "hint" if is_plain_kd(cfg) else "kd"
            composing = ", ".join(f"loss={n}" for n, c in FAMILIES.items() if c.composes_terms)
            require(False, key, OmegaConf.to_container(cfg[key]), f"loss={cls.name} does not compose distillation terms "
                    f"here (only {composing} does); use kd=hinton hint=none with loss={cls.name}")

    # Keys of the `loss` section the family accepts but does not use (not logged as params).
    unused_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def unused_params(cls, cfg) -> tuple[str, ...]:
        """Prefixes of the flattened params that do not apply to this run: the family's unused
        `loss` keys, and the kd= and hint= sections where the family does not compose them."""
        unused = tuple(f"loss.{key}" for key in cls.unused_keys)
        return unused if cls.composes(cfg) else (*unused, "kd.", "hint.")

    @classmethod
    def roles(cls, cfg) -> tuple[str, str]:
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
        the members' softmax probabilities (weighted by `weights` when given)."""
        from kdexp.losses import ensemble_probs
        from kdexp.train import evaluate

        ctx = self.ctx
        predict = lambda x: {name: ensemble_probs([m(x) for m in models], weights)}  # noqa: E731
        members = {f"{name}{i}": m for i, m in enumerate(models)}
        out = {}
        for split_name, suffix in (("test", "acc"), ("val", "val_acc")):
            split = getattr(ctx.dataset, split_name)
            if split is not None:
                acc = evaluate(predict, members, split, ctx.cfg.data.eval_batch_size)[name]
                out[f"{name}_{suffix}"] = acc
        return out


def is_plain_kd(cfg) -> bool:
    return KD_TERMS[cfg.kd.name].plain(cfg.kd)


REGISTRY = FAMILIES
# Class decorator: makes a family available as `loss=<cls.name>`.
register = FAMILIES.register
