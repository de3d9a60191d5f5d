"""The `Context` a loss family runs in: build a model from a seed derived from its role, train a
phase through the shared loop, get a frozen teacher or a student-alone baseline (from the model
store when it has them), and reuse a frozen model's logits. It logs every epoch to the run and
keeps the curves for the plot.
"""

from __future__ import annotations

import zlib
from typing import Callable

import torch
from omegaconf import DictConfig
from torch import nn

from kdexp import data as data_mod
from kdexp import models as models_mod
from kdexp import store as store_mod
from kdexp import teacher_import
from kdexp.checkpoint import Checkpoints
from kdexp.console import PhaseProgress, console
from kdexp.identity import stable_section
from kdexp.losses import labels_only
from kdexp.store import ModelStore
from kdexp.train import Diverged, History, Loop, Phase, autocast, evaluate

# A teacher whose test accuracy ends at most this multiple of chance (100 / classes %) learned
# nothing: distilling from it would be no result.
CHANCE_FACTOR = 1.5


def _without_prefix(metrics: dict[str, list[float]], role: str) -> dict[str, list[float]]:
    """Store entries are independent of the role name: `teacher/loss` → `loss`, and a model named
    after the role (`baseline_exit1/test_acc`, a multi-exit net's exit) → `_exit1/test_acc`."""
    out = {}
    for key, value in metrics.items():
        if key.startswith(f"{role}/"):
            out[key.removeprefix(f"{role}/")] = value
        elif key.startswith(f"{role}_"):
            out[key.removeprefix(role)] = value
        else:
            raise ValueError(f"metric {key!r} of phase {role!r} does not carry the phase's name")
    return out


def _with_prefix(metrics: dict[str, list[float]], role: str) -> dict[str, list[float]]:
    """The inverse of `_without_prefix` for `role`."""
    return {(f"{role}{k}" if k.startswith("_") else f"{role}/{k}"): v for k, v in metrics.items()}


FrozenLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def role_seed(seed: int, role: str) -> int:
    """A seed per role, stable across runs: same role and `seed` → same init and batch order."""
    return (seed * 1_000_003 + zlib.crc32(role.encode())) % 2**31


def supervised_key(cfg: DictConfig, model_cfg, init_role: str, epochs: int, augment: bool) -> tuple[str, dict]:
    """The store key of `model_cfg` trained on labels from the init and batch order of `init_role`
    (a teacher: its own role; a baseline: its student's)."""
    return store_mod.key_for(stable_section("model", model_cfg), stable_section("data", cfg.data),
                             stable_section("optim", cfg.optim), epochs, augment, role_seed(cfg.seed, init_role),
                             precision=cfg.trainer.precision)


class Context:
    def __init__(self, cfg: DictConfig, dataset: data_mod.Dataset, run, device: torch.device,
                 checkpoints: Checkpoints | None = None, store: ModelStore | None = None):
        self.cfg = cfg
        self.dataset = dataset
        self.run = run
        self.device = device
        self.checkpoints = checkpoints
        self.store = store
        self.histories: dict[str, History] = {}
        self.store_keys: dict[str, str] = {}  # role → store key of the model the store served for it
        self.loop = Loop(dataset, cfg.data, cfg.optim, PhaseProgress(cfg.trainer.progress), self._log_epoch,
                         precision=cfg.trainer.precision)

    # --- seeds and models ---
    def seed(self, role: str) -> int:
        """A seed per role, stable across runs: same role and `seed` → same init and batch order."""
        return role_seed(self.cfg.seed, role)

    def build(self, model_cfg, role: str) -> nn.Module:
        model = models_mod.build(model_cfg, self.dataset.input_shape, self.dataset.num_classes, self.seed(role))
        model = model.to(self.device)
        if self.cfg.trainer.compile:
            model.compile()  # in place: parameter names, hence state dicts, stay those of the model
        return model

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
        """Run a phase through the shared loop, resuming from its checkpoint when there is one."""
        resume, save = None, None
        if self.checkpoints is not None:
            resume = self.checkpoints.load(phase.name)
            save = lambda state: self.checkpoints.save(phase.name, state)  # noqa: E731
        history = self.loop.fit(phase, resume, save)
        if resume is not None:
            # A crash between the checkpoint and the metric logging loses that epoch's metrics.
            self._log_missing_epochs(phase.name, history)
        self.histories[phase.name] = history
        return history

    def _log_missing_epochs(self, phase: str, history: History) -> None:
        logged = self.run.logged_steps(f"{phase}/loss")
        for epoch in range(1, len(history.metrics.get(f"{phase}/loss", [])) + 1):
            if epoch not in logged:
                self.run.metrics({k: v[epoch - 1] for k, v in history.metrics.items()}, step=epoch)

    def supervised(self, model_cfg, role: str, init_role: str, epochs: int, augment: bool) -> tuple[nn.Module, History]:
        """`model_cfg` trained on the labels alone, logged under `role`; init and batch order come
        from `init_role`, so a baseline shares its student's starting point and schedule.
        Served by the model store when the same model was trained before (`store.reuse`)."""
        model = self.build(model_cfg, init_role)
        seed = self.seed(init_role)
        phase = Phase(
            name=role,
            models={role: model},
            loss=lambda x, y, idx: labels_only(model(x), y),
            predict=lambda x: {role: model(x)},
            epochs=epochs,
            seed=seed,
            augment=augment,
        )
        key = supervised_key(self.cfg, model_cfg, init_role, epochs, augment)
        return model, self.train_stored(phase, model, key, f"{role} {models_mod.describe(model_cfg)}")

    def train_stored(self, phase: Phase, model: nn.Module, key: tuple[str, dict], label: str) -> History:
        """Train `phase`, whose one model is `model`, unless the store has it under `key`
        (`store_mod.key_for`): then load the weights and log the stored curves as this run's."""
        role = phase.name
        if self.store is None:
            return self.train(phase)

        def train() -> tuple[dict, dict]:
            history = self.train(phase)
            return model.state_dict(), _without_prefix(history.metrics, role)

        return self._served(role, model, key, label, train)

    def _served(self, role: str, model: nn.Module, key: tuple[str, dict], label: str,
                produce: Callable[[], tuple[dict, dict]], tags: dict | None = None, made: str = "trained") -> History:
        """`model` from the store under `key`, or made by `produce()` (training it, importing it)
        and stored; its curves logged as this run's when they were not logged while training."""
        digest, payload = key
        source, store_run, generic = self.store.get_or_train(digest, payload, label, model.load_state_dict,
                                                             produce, tags, made)
        self.store_keys[role] = digest
        self.run.tags({f"kdexp.{role}.source": source, f"kdexp.{role}.lineage": store_run})
        if source == "trained":  # the loop logged every epoch
            return self.histories[role]
        history = self._logged(role, generic)
        if source == "store":
            console.print(f"[bold]{role}[/bold]: loaded from the model store (run {store_run}, key {digest[:8]})")
        return history

    def _logged(self, role: str, generic: dict[str, list[float]]) -> History:
        """Log store-independent curves (`_without_prefix`) as this run's `role`, epoch by epoch."""
        history = History(_with_prefix(generic, role))
        for epoch in range(1, len(next(iter(history.metrics.values()), [])) + 1):
            self.run.metrics({k: v[epoch - 1] for k, v in history.metrics.items()}, step=epoch)
        self.histories[role] = history
        return history

    def imported(self, model_cfg, role: str) -> tuple[nn.Module, History]:
        """A teacher whose weights come from `model_cfg.checkpoint` (kdexp/teacher_import.py), not
        trained: its accuracies are measured once and logged as a one-epoch teacher's, and the
        import is a store entry keyed by the weights' identity, so a sweep imports it once and
        its students share its cached logits as they share a trained teacher's."""
        # multi_teacher's teachers are roles teacher0, teacher1, ... of loss.teachers[0], [1], ...
        index = role.removeprefix("teacher")
        config_key = f"loss.teachers[{index}].checkpoint" if index else "teacher.checkpoint"
        ref = str(model_cfg.checkpoint)
        model = self.build(model_cfg, role)
        source = teacher_import.source_of(ref, config_key)

        def produce() -> tuple[dict, dict]:
            teacher_import.import_weights(model, model_cfg, config_key)
            console.print(f"[bold]{role}[/bold]: imported from {ref}, not trained", highlight=False)
            metrics = {}
            for split_name in ("test", "val"):
                split = getattr(self.dataset, split_name)
                if split is not None:
                    accs = evaluate(lambda x: {role: model(x)}, {role: model}, split,
                                    self.cfg.data.eval_batch_size, self.cfg.trainer.precision)
                    metrics[f"{role}/{split_name}_acc"] = [accs[role]]
            return model.state_dict(), _without_prefix(metrics, role)

        self.run.tags({f"kdexp.{role}.checkpoint": ref})
        if self.store is None:
            history = self._logged(role, produce()[1])
        else:
            key = store_mod.imported_key_for(stable_section("model", model_cfg), self.cfg.data, source,
                                             self.cfg.trainer.precision)
            tags = {"kdexp.imported_from": ref, **{f"kdexp.imported.{k}": str(v) for k, v in source.items()}}
            label = f"{role} {models_mod.describe(model_cfg)} imported"
            history = self._served(role, model, key, label, produce, tags, made="imported")
        return model, history

    def teacher(self, model_cfg, role: str = "teacher") -> tuple[nn.Module, History]:
        """A teacher trained on labels (or imported: `checkpoint`), returned frozen (eval mode, no gradients)."""
        t = self.cfg.trainer
        if model_cfg.get("checkpoint"):
            model, history = self.imported(model_cfg, role)
        else:
            model, history = self.supervised(model_cfg, role, role, t.teacher_epochs,
                                             bool(self.cfg.data.augment or t.teacher_augment))
        self._refuse_chance_level(history, role)
        model.eval().requires_grad_(False)
        return model, history

    def _refuse_chance_level(self, history: History, role: str) -> None:
        """A teacher at chance level fails the run before any student is distilled from it."""
        acc, chance = history.last(f"{role}/test_acc"), 100.0 / self.dataset.num_classes
        if self.cfg.trainer.fail_at_chance and acc <= CHANCE_FACTOR * chance:
            raise Diverged(f"{role} ended at chance level ({acc:.2f} % on {self.dataset.num_classes} classes, "
                           f"chance {chance:.2f} %); the run FAILED before distilling a student; likely cause: "
                           f"optim.lr={self.cfg.optim.lr:g} (too high or too low), or too few trainer.teacher_epochs "
                           f"(trainer.fail_at_chance=false lets it pass)")

    def baseline(self, model_cfg, init_role: str, role: str = "baseline") -> History:
        """The student trained alone from the same initialisation and schedule as `init_role`."""
        return self.supervised(model_cfg, role, init_role, self.cfg.trainer.epochs, self.augment_students)[1]

    def frozen_logits(self, model: nn.Module, role: str | None = None) -> FrozenLogits:
        """`(x, idx) → logits` of a frozen model. When students see unaugmented inputs the logits of
        the whole training split are computed once and looked up by index; otherwise per batch.
        Per batch, the loop's autocast applies; the cache is computed under the same precision and
        kept as float32 on the data's device. A model the store served under `role` keeps its
        cache in the store too, so every student of a sweep reuses one pass over the data."""
        if self.augment_students:
            def per_batch(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return model(x)
            return per_batch
        model.eval()

        def compute() -> torch.Tensor:
            with torch.no_grad(), autocast(self.device, self.cfg.trainer.precision):
                batches = data_mod.eval_batches(self.dataset.train, self.cfg.data.eval_batch_size)
                return torch.cat([model(x).float() for x, _ in batches])

        cached = self._stored_logits(role, compute) if role in self.store_keys else compute()
        return lambda x, idx: cached.index_select(0, idx)  # = cached[idx], faster for small batches

    def _stored_logits(self, role: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`compute()`'s logits of the stored model served under `role`, from the store or into it."""
        key, payload = store_mod.logits_key_for(self.store_keys[role], self.cfg.trainer.precision)
        logits: dict[str, torch.Tensor] = {}

        def fill() -> tuple[dict, dict]:
            logits["train"] = compute()
            return {"train": logits["train"].cpu()}, {}

        def load(state: dict) -> None:
            logits["train"] = state["train"].to(self.device)

        label = f"logits of {role} {self.store_keys[role][:8]}"
        source, _, _ = self.store.get_or_train(key, payload, label, load, fill)
        self.run.tags({f"kdexp.{role}.logits": "store" if source == "store" else "computed"})
        return logits["train"]

    def val_acc(self, history: History, name: str) -> float | None:
        key = f"{name}/val_acc"
        return history.last(key) if key in history.metrics else None
