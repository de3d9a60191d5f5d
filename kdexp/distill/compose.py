"""The loss of a student distilled from one frozen teacher through the config's methods: the logit
method (`kd=`) and the feature method (`hint=`), with the features they ask for captured in the same
forward passes (kdexp/distill/features.py) and their trainable parts handed to the phase.

The teacher's logits come from `teacher_logits()` (the family's frozen logits: computed once for
the training split and looked up by index) unless a method needs the teacher's features: then the
teacher runs on every batch. It sees tensors, configs and a seed, never the run's context.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from kdexp.distill.features import Capture
from kdexp.config.registry import HINT_METHODS, KD_METHODS
from kdexp.data.source import Source
from kdexp.distill.methods import Outputs
from kdexp.distill.methods.base import MethodStage, TrainingSet
from kdexp.distill.phase import Clock, LossFn

TeacherFn = Callable[[torch.Tensor, torch.Tensor], Outputs]
FrozenLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def training_set(source: Source) -> TrainingSet:
    """The training split as methods see it: its size, and its labels by index (read once, when a
    method asks: CRD's negatives are drawn from the other classes)."""
    cache: list[torch.Tensor] = []

    def labels() -> torch.Tensor:
        if not cache:
            out = torch.full((source.size("train"),), -1, dtype=torch.long, device=source.device)
            for _, y, idx in source.eval_batches("train"):
                out[idx.to(out.device)] = y.to(out.device)
            cache.append(out)
        return cache[0]
    return TrainingSet(source.size("train"), labels)


class ComposedLoss:
    """`step_loss(x, y, idx)` for the phase, `parts` for its optimiser; a context manager that
    removes its feature hooks when the phase is over.

    `cfg`: the typed config (its `kd`, `hint` and `loss` sections); `teacher_logits()`: the frozen
    teacher's `(x, idx) → logits`, asked for only when no method needs the teacher's features;
    `probe`: two training inputs and their indices, from which the methods size their trainable
    parts, drawn from `seed` (the student's init and batch order are untouched); `train_set`: the
    training split's size and labels, for state sized by the data set (CRD's memory bank)."""

    def __init__(self, cfg, student: nn.Module, teacher: nn.Module, teacher_logits: Callable[[], FrozenLogits],
                 probe: tuple[torch.Tensor, torch.Tensor], seed: int, device: torch.device, clock: Clock,
                 train_set: TrainingSet | None = None):
        self.student, self.clock = student, clock
        self.kd = KD_METHODS[cfg.kd.name](cfg.kd, cfg.loss)
        self.hint = None if HINT_METHODS[cfg.hint.name].plain(cfg.hint) else HINT_METHODS[cfg.hint.name](cfg.hint, cfg.loss)
        self.methods = [m for m in (self.kd, self.hint) if m is not None]
        self.hint_weight = self.hint.cfg.weight if self.hint is not None else 0.0  # read once, not per step
        for method in self.methods:
            method.train_set = train_set
            method.resolve(student, teacher)
        student_layers = _unique([n for m in self.methods for n in m.student_layers()])
        teacher_layers = _unique([n for m in self.methods for n in m.teacher_layers()])
        self.student_capture = Capture(student, student_layers, "hint.student") if student_layers else None
        self.teacher_capture = Capture(teacher, teacher_layers, "hint.teacher") if teacher_layers else None
        self.teacher = self._teacher_fn(teacher, teacher_logits)
        if student_layers or teacher_layers:
            self._setup(probe, seed)
        for method in self.methods:
            method.to(device)

    def _teacher_fn(self, teacher: nn.Module, teacher_logits: Callable[[], FrozenLogits]) -> TeacherFn:
        if self.teacher_capture is None:
            logits = teacher_logits()
            return lambda x, idx: Outputs(logits(x, idx))
        capture = self.teacher_capture
        teacher.eval()

        def per_batch(x: torch.Tensor, idx: torch.Tensor) -> Outputs:
            with torch.no_grad():
                return Outputs(teacher(x), dict(capture.features))
        return per_batch

    def _setup(self, probe: tuple[torch.Tensor, torch.Tensor], seed: int) -> None:
        """Let the methods build their trainable parts from a probe batch's shapes, from a seed of
        their own (the student's init and batch order are untouched)."""
        x, idx = probe
        was_training = self.student.training
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            student = self._student(x, eval_mode=True)
            teacher = self.teacher(x, idx)
            for method in self.methods:  # each from the seed: a part's init is independent of the other method
                torch.manual_seed(seed)
                method.setup(student, teacher)
        self.student.train(was_training)

    def _student(self, x: torch.Tensor, eval_mode: bool = False) -> Outputs:
        if eval_mode:
            self.student.eval()
        logits = self.student(x)
        return Outputs(logits, dict(self.student_capture.features) if self.student_capture else {})

    @property
    def parts(self) -> dict[str, nn.Module]:
        """The methods that own parameters (a connector, a temperature), by config section."""
        return {m.section(): m for m in self.methods if any(True for _ in m.parameters())}

    def stages(self) -> list[MethodStage]:
        """The stages the methods train before distillation, in order."""
        return [stage for m in self.methods for stage in m.stages(self.student)]

    def stage_loss(self, stage: MethodStage, clock: Clock) -> LossFn:
        """`stage`'s step loss on a batch: the features its method asked for, from the same hooks."""
        def step(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
            student = None if stage.teacher_only else self._student(x)
            return stage.loss((x, y, idx), clock, student, self.teacher(x, idx))
        return step

    def step_loss(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        student = self._student(x)
        teacher = self.teacher(x, idx)
        terms = self.kd((x, y, idx), self.clock, student, teacher)
        if self.hint is not None:
            hint = self.hint((x, y, idx), self.clock, student, teacher)["hint"]
            terms = {**terms, "loss": terms["loss"] + self.hint_weight * hint, "hint": hint}
        return terms

    def close(self) -> None:
        for capture in (self.student_capture, self.teacher_capture):
            if capture is not None:
                capture.close()

    def __enter__(self) -> "ComposedLoss":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
