"""The training loop every loss family shares.

It trains a `Phase` (kdexp/distill/phase.py: what a family hands the loop) and knows no family
and no method. Before each step it sets the phase's `clock` (epoch, step, epochs), which methods
with a schedule read.

A loss that is not finite stops the phase at once (`NonFiniteLoss`); a finite one that ends an epoch
orders of magnitude above the first step's (`DIVERGED_FACTOR`) stops it as `Diverged`: the run
failed, and its numbers would not be a result.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from kdexp.data.source import Source
from kdexp.run import distributed
from kdexp.distill.functional import accuracy
from kdexp.distill.phase import Clock, History, Phase, PredictFn  # noqa: F401  (the loop's inputs)



_GPU_CHECK_EVERY = 50


# An epoch whose mean loss exceeds this multiple of the phase's first step's loss has diverged.
DIVERGED_FACTOR = 1000.0


class NonFiniteLoss(RuntimeError):
    """Training produced NaN/inf; the message names the phase, epoch and step."""


class Diverged(NonFiniteLoss):
    """Training blew up (or ended at chance level): finite numbers that are not a result. The
    message is one line naming the likely cause; the CLI prints it like a non-finite loss."""


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    """`optim.fused` updates all parameters in one kernel (CPU and CUDA): ~40% faster steps for
    small models, with last-bit rounding differences from the per-parameter loop."""
    params = list(params)
    # None lets torch choose; fused kernels exist for CPU and CUDA tensors.
    fused = (bool(cfg.get("fused", False)) and params[0].device.type in ("cpu", "cuda")) or None
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg, epochs: int):
    """The learning-rate schedule named by `optim.scheduler`, stepped once per epoch; None = constant.
    multistep: lr *= gamma after each epoch in `milestones` (the CIFAR recipe: 150, 180, 210);
    cosine: from lr down to `min_lr` over the phase's epochs."""
    kind = cfg.get("scheduler", "none")
    if kind == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), gamma=cfg.gamma)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=cfg.min_lr)
    return None


def autocast(device: torch.device, precision: str):
    """The context forward passes and losses run in: `torch.autocast` to bfloat16 on `device` for
    `trainer.precision=bf16` (weights, gradients and optimiser state stay float32), to float16 for
    `fp16` (CUDA; the loop scales the loss with a GradScaler), else nothing."""
    if str(precision) in ("bf16", "fp16"):
        dtype = torch.bfloat16 if str(precision) == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(predict: PredictFn, models: dict[str, nn.Module], source: Source, split: str,
             precision: str = "32") -> dict[str, float]:
    """Accuracy (in %) on `split` of every model `predict` returns, in eval mode; restores train mode."""
    modes = {name: m.training for name, m in models.items()}
    for m in models.values():
        m.eval()
    correct: dict[str, torch.Tensor] = {}
    for x, y, _ in source.eval_batches(split):
        with autocast(x.device, precision):
            predicted = predict(x)
        for name, logits in predicted.items():
            correct[name] = correct.get(name, 0) + accuracy(logits, y)
    for name, m in models.items():
        m.train(modes[name])
    names = list(correct)  # each rank counted its shard: the sum is over the whole split
    if not names:
        return {}
    counts = distributed.sum_(torch.stack([torch.as_tensor(correct[n], dtype=torch.float64) for n in names]))
    return {name: 100.0 * float(c) / source.size(split) for name, c in zip(names, counts.tolist())}


class Loop:
    """Runs phases on one data set with one optimiser recipe; reports through `on_epoch`."""

    def __init__(self, source: Source, optim_cfg, progress, on_epoch: Callable[[str, int, dict], None],
                 precision: str = "32"):
        self.source = source
        self.optim_cfg = optim_cfg
        self.progress = progress
        self.on_epoch = on_epoch
        self.precision = str(precision)

    def fit(self, phase: Phase, resume: dict | None = None,
            save: Callable[[dict], None] | None = None) -> History:
        """Train `phase`; `resume` is a state `save` wrote at the end of an earlier epoch."""
        trained = {**phase.models, **phase.parts}
        params = [p for m in trained.values() for p in m.parameters()]
        optimizer = make_optimizer(params, self.optim_cfg)
        scheduler = make_scheduler(optimizer, self.optim_cfg, phase.epochs)
        generator = torch.Generator(device="cpu").manual_seed(phase.seed)
        # fp16 gradients underflow without loss scaling; disabled, the scaler passes everything through.
        scaler = torch.amp.GradScaler(params[0].device.type if params else "cpu", enabled=self.precision == "fp16")
        history, first_epoch, first_loss = History(), 1, None
        if resume is not None:
            for name, model in phase.models.items():
                model.load_state_dict(resume["models"][name])
            for name, part in phase.parts.items():
                part.load_state_dict(resume["parts"][name])
            first_loss = resume.get("first_loss")
            optimizer.load_state_dict(resume["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(resume["scheduler"])
            generator.set_state(resume["generator"])
            if resume.get("scaler"):
                scaler.load_state_dict(resume["scaler"])
            history.metrics = {k: list(v) for k, v in resume["history"].items()}
            first_epoch = resume["epoch"] + 1
        size = self.source.size("train")
        # Read once: a config attribute costs ~10 µs, a small model's whole step a few hundred.
        batch_size = int(self.source.cfg.batch_size)
        steps = math.ceil(size / batch_size)
        # Under DDP every trained parameter's gradient is averaged over ranks (one process: as is).
        step_loss = distributed.step_fn(trained, phase.step_loss, params[0].device if params else None)
        for m in trained.values():
            m.train()
        clock = phase.clock
        clock.epochs, clock.steps = phase.epochs, steps
        with self.progress.phase(phase.name, phase.epochs * steps, (first_epoch - 1) * steps) as bar:
            for epoch in range(first_epoch, phase.epochs + 1):
                # Dropout and other global-RNG users draw from a per-epoch seed, so a resumed
                # run repeats exactly what an uninterrupted one does.
                torch.manual_seed(phase.seed * 10_007 + epoch)
                names, sums = None, None
                batches = bar.timed(self.source.train_batches(generator, phase.augment))  # img/s, data share
                for step, (x, y, idx) in enumerate(batches, start=1):
                    clock.epoch, clock.step = epoch, step
                    with autocast(x.device, self.precision):  # forward and loss; backward outside
                        terms = step_loss(x, y, idx)
                    loss = terms["loss"]
                    self._check_finite(loss, phase, epoch, step)
                    if first_loss is None and first_epoch == 1:  # the models as initialised
                        first_loss = float(loss.detach())
                    for p in params:  # = optimizer.zero_grad(set_to_none=True), minus its per-call overhead
                        p.grad = None
                    weight = distributed.shard_weight(len(y), step, size, batch_size)
                    scaler.scale(loss if weight == 1.0 else loss * weight).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    # One stacked tensor per step instead of a few ops per term: small models run
                    # thousands of steps a second, and the epoch's means are read once at its end.
                    values = torch.stack([v.detach().float() for v in terms.values()])
                    if sums is None:
                        names, sums = list(terms), values * len(y)
                    else:
                        sums.add_(values, alpha=len(y))
                    bar.advance(epoch, step, loss, len(y))
                means = (distributed.sum_(sums) / size).tolist()  # sums over every rank's rows
                metrics = {f"{phase.name}/{k}": v for k, v in zip(names, means)}
                self._check_diverged(metrics[f"{phase.name}/loss"], first_loss, phase, epoch)
                if scheduler is not None:  # log the epoch's learning rate, then move to the next one
                    metrics[f"{phase.name}/lr"] = optimizer.param_groups[0]["lr"]
                    scheduler.step()
                for split_name in self.source.eval_splits:
                    accs = evaluate(phase.predict, phase.models, self.source, split_name, self.precision)
                    metrics.update({f"{name}/{split_name}_acc": acc for name, acc in accs.items()})
                history.add(metrics)
                if save is not None:
                    save({
                        "epoch": epoch,
                        "models": {name: m.state_dict() for name, m in phase.models.items()},
                        "parts": {name: m.state_dict() for name, m in phase.parts.items()},
                        "first_loss": first_loss,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "generator": generator.get_state(),
                        "scaler": scaler.state_dict(),
                        "history": history.metrics,
                    })
                bar.epoch_done(epoch, metrics)
                self.on_epoch(phase.name, epoch, metrics)
        return history

    def _check_finite(self, loss: torch.Tensor, phase: Phase, epoch: int, step: int) -> None:
        """Stop at the first non-finite loss. On CPU the check is free; on an accelerator it would
        force a sync every step, so there it runs every `_GPU_CHECK_EVERY` steps."""
        if loss.device.type != "cpu" and step % _GPU_CHECK_EVERY:
            return
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(
                f"non-finite loss ({value}) in phase {phase.name!r} at epoch {epoch}, step {step}; "
                f"lower optim.lr or check the inputs"
            )

    def _check_diverged(self, epoch_loss: float, first_loss: float | None, phase: Phase, epoch: int) -> None:
        """Stop a phase whose epoch loss blew up: finite, but `DIVERGED_FACTOR` times (or more) the
        loss of its first step, i.e. of the models as initialised."""
        if first_loss is None or not math.isfinite(epoch_loss):
            return
        if epoch_loss > DIVERGED_FACTOR * max(abs(first_loss), 1e-3):
            raise Diverged(
                f"phase {phase.name!r} diverged at epoch {epoch}: mean loss {epoch_loss:.3g} against "
                f"{first_loss:.3g} at its first step; the run FAILED; likely cause: optim.lr={self.optim_cfg.lr:g} "
                f"is too high"
            )
