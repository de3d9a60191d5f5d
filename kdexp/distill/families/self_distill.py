"""`loss=self`: self-distillation of the student, without a separate teacher.

mode=byot (Be Your Own Teacher, Zhang et al. 2019): the student becomes a `MultiExit` net, an exit
after each stage; the deepest exit trains on the labels and teaches every shallower exit
(`losses.self_distill`). The baseline is the same multi-exit net, from the same initialisation and
batch order, with every exit trained on the labels alone. Every exit is reported as a model of its own.

mode=born_again (Furlanello et al. 2018): generation 0 is the student trained on the labels (from
the student's initialisation and batch order: the same model as the other families' baseline),
generation k+1 the same architecture from a fresh initialisation, distilled from frozen generation k
through the config's `kd=` and `hint=` terms (default: Hinton's loss with loss.temperature and
loss.alpha). Generation 0 is the baseline of every later one (`gen{k}_kd_gain`); the fresh
initialisations keep the generations diverse enough for their ensemble to pay.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdexp.distill.functional import self_distill
from kdexp.distill.families.base import Family, Outcome, register
from kdexp.config.models import stage_count
from kdexp.models.factory import count_params, describe, multi_exit
from kdexp.config.checks import require
from kdexp.distill.phase import Clock, Phase

SELF_MODES = ("byot", "born_again")


@dataclass
class SelfLossConfig:
    """Self-distillation of the student. mode=byot (Be Your Own Teacher): an exit after each stage,
    the deepest exit teaches the shallower ones; mode=born_again: generation 0 is the student on
    labels, generation k+1 the same architecture distilled from generation k."""

    name: str = "self"
    temperature: float = 3.0
    alpha: float = 0.5
    mode: str = "byot"
    # byot: weight of ‖h_i − h_deep‖² between each exit's bottleneck features and the deepest's.
    feature_weight: float = 0.0
    # born_again: number of distilled generations after generation 0.
    generations: int = 2


@register
class SelfDistillation(Family):
    name = "self"
    schema = SelfLossConfig
    composes_methods = True  # in mode=born_again: each generation is distilled through kd= and hint=
    method_keys = ("temperature", "alpha")  # born_again: kd=hinton's T and alpha

    @classmethod
    def unused_keys(cls, cfg) -> dict[str, str]:
        if cfg.loss.mode == "byot":
            return {"generations": "with loss.mode=byot (only with loss.mode=born_again)"}
        return {"feature_weight": "with loss.mode=born_again (only with loss.mode=byot)"}

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        loss = cfg.loss
        require(loss.mode in SELF_MODES, "loss.mode", loss.mode, f"allowed for loss=self: {', '.join(SELF_MODES)}")
        require(loss.feature_weight >= 0, "loss.feature_weight", loss.feature_weight, "must be >= 0")
        require(loss.generations >= 1, "loss.generations", loss.generations,
                "must be >= 1 (distilled generations after generation 0)")
        stages = stage_count(cfg.student)
        if loss.mode == "byot" and stages is not None and stages < 2:
            key = "hidden" if cfg.student.name == "mlp" else "channels"
            require(False, f"student.{key}", list(cfg.student[key]),
                    "loss=self needs a student with at least two stages (one exit each), "
                    f"e.g. student.{key}={'[256,128]' if key == 'hidden' else '[32,64]'}, or loss.mode=born_again")

    @classmethod
    def pair_labels(cls, cfg) -> tuple[str, str]:
        return "(itself)", describe(cfg.student)

    @classmethod
    def composes(cls, cfg) -> bool:
        return cfg.loss.mode == "born_again"

    @classmethod
    def method_teacher(cls, cfg):
        return cfg.student  # generation k teaches generation k+1, the same architecture

    def run(self) -> Outcome:
        return self.born_again() if self.cfg.mode == "born_again" else self.byot()

    # --- deep-to-shallow over the exits of one net ---
    def _multi_exit(self):
        ctx = self.ctx
        net = ctx.build(ctx.cfg.student, "student")
        return multi_exit(net, ctx.source.input_shape, ctx.source.num_classes, ctx.seed("student/exits"))

    def _exit_phase(self, name: str, model, prefix: str, alpha: float, feature_weight: float) -> Phase:
        ctx, T = self.ctx, self.cfg.temperature

        def loss(x, y, idx):
            logits, feats = model.outputs(x)
            return self_distill(logits, y, T, alpha, feats, feature_weight)

        def predict(x):
            logits, _ = model.outputs(x)
            return {f"{prefix}exit{i}": z for i, z in enumerate(logits, start=1)}

        return Phase(name=name, models={name: model}, step_loss=loss, predict=predict,
                     epochs=ctx.cfg.trainer.epochs, seed=ctx.seed("student"), augment=ctx.augment_students)

    def _byot_baseline(self):
        """The multi-exit net with every exit on the labels alone: nothing of `loss` but the mode
        shapes it, so the jobs of a T x alpha sweep share one, through the store."""
        ctx, cfg = self.ctx, self.ctx.cfg
        phase = self._exit_phase("baseline", self._multi_exit(), "baseline_", 1.0, 0.0)
        return ctx.stored_phase(phase, cfg.student, "student", f"baseline byot {ctx.describe(cfg.student)}",
                                variant="byot exits on labels")

    def byot(self) -> Outcome:
        ctx = self.ctx
        base_hist = None
        if ctx.cfg.trainer.baseline:  # same net, init and batch order; every exit on the labels alone
            base_hist = self._byot_baseline()
        student = self._multi_exit()
        hist = ctx.train(self._exit_phase("student", student, "", self.cfg.alpha, self.cfg.feature_weight))

        n = student.num_exits
        metrics: dict[str, float] = {"exits": n}
        rows = []
        accs, base_accs, val_accs = [], [], []
        for i in range(1, n + 1):
            acc = hist.last(f"exit{i}/test_acc")
            params = count_params(student.exit_net(i))
            metrics.update({f"exit{i}_acc": acc, f"exit{i}_params": params})
            accs.append(acc)
            val = ctx.val_acc(hist, f"exit{i}")
            if val is not None:
                metrics[f"exit{i}_val_acc"] = val
                val_accs.append(val)
            text = f"{acc:.2f} %"
            if base_hist is not None:
                base = base_hist.last(f"baseline_exit{i}/test_acc")
                base_accs.append(base)
                metrics.update({f"exit{i}_baseline_acc": base, f"exit{i}_kd_gain": acc - base})
                text += f"  (labels only {base:.2f} %, {acc - base:+.2f})"
            depth = "deepest, the whole model" if i == n else f"after stage {i}"
            rows.append((f"exit{i} ({depth}, {params:,} params)", text))
        metrics["mean_acc"] = sum(accs) / n
        rows.append(("mean over exits", f"{metrics['mean_acc']:.2f} %"))
        if base_accs:
            metrics["baseline_mean_acc"] = sum(base_accs) / n
            metrics["kd_gain"] = metrics["mean_acc"] - metrics["baseline_mean_acc"]
            rows.append(("KD gain (mean over exits)", f"{metrics['kd_gain']:+.2f} points"))
        objective = "mean_acc"
        if val_accs:
            metrics["mean_val_acc"] = sum(val_accs) / n
            objective = "mean_val_acc"
        deploy = {f"exit{i}": student.exit_net(i) for i in range(1, n + 1)}
        return Outcome(metrics, rows, objective, deploy)

    # --- generations of the same architecture ---
    def born_again(self) -> Outcome:
        ctx, cfg = self.ctx, self.ctx.cfg
        epochs, augment = cfg.trainer.epochs, ctx.augment_students
        gen0, hist0 = ctx.on_labels(cfg.student, "gen0", "student", epochs, augment)
        gen0.eval().requires_grad_(False)
        gens, hists = [gen0], [hist0]
        for k in range(1, self.cfg.generations + 1):
            role = f"gen{k}"
            model = ctx.build(cfg.student, role)
            clock = Clock()
            with self.composed_loss(model, gens[-1], f"gen{k - 1}", clock) as composed:
                self.method_stages(composed, f"gen{k - 1}", prefix=f"{role}_")
                phase = Phase(
                    name=role,
                    models={role: model},
                    step_loss=composed.step_loss,
                    predict=lambda x, m=model, r=role: {r: m(x)},
                    epochs=epochs,
                    seed=ctx.seed(role),
                    augment=augment,
                    parts=composed.parts,
                    clock=clock,
                )
                hists.append(ctx.train(phase))
            model.eval().requires_grad_(False)
            gens.append(model)

        gen0_acc = hist0.last("gen0/test_acc")
        params = count_params(gen0)
        metrics: dict[str, float] = {"student_params": params}
        rows = []
        for k, hist in enumerate(hists):
            acc = hist.last(f"gen{k}/test_acc")
            metrics[f"gen{k}_acc"] = acc
            val = ctx.val_acc(hist, f"gen{k}")
            if val is not None:
                metrics[f"gen{k}_val_acc"] = val
            if k == 0:
                rows.append((f"gen0 {ctx.describe(cfg.student)} (labels only) accuracy", f"{acc:.2f} %"))
            else:
                metrics[f"gen{k}_kd_gain"] = acc - gen0_acc
                rows.append((f"gen{k} (distilled from gen{k - 1}) accuracy", f"{acc:.2f} %  ({acc - gen0_acc:+.2f} vs gen0)"))
        metrics.update(self.ensemble_accs(gens, "ensemble"))
        rows.append((f"ensemble of the {len(gens)} generations", f"{metrics['ensemble_acc']:.2f} %"))
        last = len(gens) - 1
        metrics.update(student_acc=metrics[f"gen{last}_acc"], baseline_acc=gen0_acc,
                       kd_gain=metrics[f"gen{last}_acc"] - gen0_acc)
        rows.append((f"KD gain (gen{last} - gen0)", f"{metrics['kd_gain']:+.2f} points"))
        rows.append(("parameters per generation", f"{params:,}"))
        objective = "student_acc"
        if f"gen{last}_val_acc" in metrics:
            metrics["student_val_acc"] = metrics[f"gen{last}_val_acc"]
            objective = "student_val_acc"
        return Outcome(metrics, rows, objective, deploy={f"gen{k}": m for k, m in enumerate(gens)})
