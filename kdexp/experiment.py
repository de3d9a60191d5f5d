"""One experiment: data loaded once, the chosen family run through a `Context`, everything tracked.

The `Context` is what a family may use: build a model from a seed derived from its role, train a
phase through the shared loop, get a frozen teacher or a student-alone baseline, and reuse a
frozen model's logits. It logs every epoch to the run and keeps the curves for the plot.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdexp import config as config_mod
from kdexp import data as data_mod
from kdexp import models as models_mod
from kdexp.config import ConfigError
from kdexp.console import PhaseProgress, console, summary
from kdexp.train import History, Loop, Phase

FrozenLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda is not available on this machine; allowed here: cpu, auto")
    return torch.device(name)


class Context:
    def __init__(self, cfg: DictConfig, dataset: data_mod.Dataset, run, device: torch.device):
        self.cfg = cfg
        self.dataset = dataset
        self.run = run
        self.device = device
        self.histories: dict[str, History] = {}
        self.loop = Loop(dataset, cfg.data, cfg.optim, PhaseProgress(cfg.trainer.progress), self._log_epoch)

    # --- seeds and models ---
    def seed(self, role: str) -> int:
        """A seed per role, stable across runs: same role and `seed` → same init and batch order."""
        return (self.cfg.seed * 1_000_003 + zlib.crc32(role.encode())) % 2**31

    def build(self, model_cfg, role: str) -> nn.Module:
        model = models_mod.build(model_cfg, self.dataset.input_shape, self.dataset.num_classes, self.seed(role))
        return model.to(self.device)

    @staticmethod
    def describe(model_cfg) -> str:
        return models_mod.describe(model_cfg)

    @property
    def augment_students(self) -> bool:
        return bool(self.cfg.data.augment)

    # --- training ---
    def _log_epoch(self, phase: str, epoch: int, metrics: dict[str, float]) -> None:
        self.run.metrics(metrics, step=epoch)

    def train(self, phase: Phase) -> History:
        history = self.loop.fit(phase)
        self.histories[phase.name] = history
        return history

    def supervised(self, model_cfg, role: str, init_role: str, epochs: int, augment: bool) -> tuple[nn.Module, History]:
        """`model_cfg` trained on the labels alone, logged under `role`; init and batch order come
        from `init_role`, so a baseline shares its student's starting point and schedule."""
        model = self.build(model_cfg, init_role)
        phase = Phase(
            name=role,
            models={role: model},
            loss=lambda x, y, idx: {"loss": nn.functional.cross_entropy(model(x), y)},
            predict=lambda x: {role: model(x)},
            epochs=epochs,
            seed=self.seed(init_role),
            augment=augment,
        )
        return model, self.train(phase)

    def teacher(self, model_cfg, role: str = "teacher") -> tuple[nn.Module, History]:
        """A teacher trained on labels, returned frozen (eval mode, no gradients)."""
        t = self.cfg.trainer
        model, history = self.supervised(model_cfg, role, role, t.teacher_epochs,
                                         bool(self.cfg.data.augment or t.teacher_augment))
        model.eval().requires_grad_(False)
        return model, history

    def baseline(self, model_cfg, init_role: str, role: str = "baseline") -> History:
        """The student trained alone from the same initialisation and schedule as `init_role`."""
        return self.supervised(model_cfg, role, init_role, self.cfg.trainer.epochs, self.augment_students)[1]

    def frozen_logits(self, model: nn.Module) -> FrozenLogits:
        """`(x, idx) → logits` of a frozen model. When students see unaugmented inputs the logits of
        the whole training split are computed once and looked up by index; otherwise per batch."""
        if self.augment_students:
            def per_batch(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return model(x)
            return per_batch
        model.eval()
        with torch.no_grad():
            train = self.dataset.train
            bs = self.cfg.data.eval_batch_size
            cached = torch.cat([model(x) for x, _ in data_mod.eval_batches(train, bs)])
        return lambda x, idx: cached[idx]

    def val_acc(self, history: History, name: str) -> float | None:
        key = f"{name}/val_acc"
        return history.last(key) if key in history.metrics else None


def run_tags(cfg: DictConfig, overrides: list[str]) -> dict[str, str]:
    from kdexp.tracking import git_commit

    tags = {
        "loss_family": cfg.loss.name,
        "teacher": models_mod.describe(cfg.teacher),
        "student": models_mod.describe(cfg.student),
        "dataset": cfg.data.name,
        "overrides": " ".join(overrides) or "(none)",
    }
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


def default_run_name(cfg: DictConfig, overrides: list[str]) -> str:
    return " ".join(overrides) if overrides else f"{cfg.loss.name} {models_mod.describe(cfg.teacher)}→{models_mod.describe(cfg.student)}"


def run(cfg: DictConfig, overrides: list[str], hydra_dir: Path | None = None,
        parent_run_id: str | None = None) -> float:
    """Train and track one experiment described by a validated config; returns the objective."""
    from kdexp import plots, tracking
    from kdexp.methods import REGISTRY

    started = time.perf_counter()
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    device = resolve_device(cfg.trainer.device)
    dataset = data_mod.load(cfg.data).to(device)
    method_cls = REGISTRY[cfg.loss.name]

    run = tracking.Run(cfg.tracking, default_run_name(cfg, overrides), run_tags(cfg, overrides), parent_run_id)
    try:
        run.params(config_mod.flatten(cfg))
        run.text(OmegaConf.to_yaml(cfg), "config.yaml")
        if hydra_dir is not None:
            run.folder(hydra_dir, "hydra")
        ctx = Context(cfg, dataset, run, device)
        outcome = method_cls(ctx).run()
        wall = time.perf_counter() - started
        outcome.metrics["wall_time_s"] = wall
        run.metrics(outcome.metrics)
        figure = plots.learning_curves(ctx.histories)
        run.figure(figure, "learning_curves.png")
        plots.close(figure)
        if cfg.tracking.log_model:
            example = dataset.test.x[:2].cpu().numpy()
            for name, model in outcome.deploy.items():
                uri = run.model(model.cpu().eval(), name, example)
                run.tags({f"{name}_model_uri": uri})
        run.finish()
    except BaseException as err:
        run.fail(err)
        raise
    rows = outcome.rows + [("wall time", f"{wall:.1f} s")]
    summary(f"kdexp · {cfg.loss.name} · {cfg.data.name}", rows,
            [f"MLflow run {run.run_id} in experiment '{cfg.tracking.experiment}' ({run.uri})",
             f"open the UI: {run.ui_hint()}"])
    return float(outcome.metrics[outcome.objective])
