"""The `Context` a loss family runs in: models built from a seed derived from their role, phases
trained through the shared loop, frozen models obtained one way, and frozen models' logits.

One way to a model: `build` makes it (seeded by its role); a phase the family composes is trained
by `train`; a model the model store may hold (a teacher, a baseline, an imported checkpoint) goes
through `_obtain`, which loads it from the store's entry on a hit and otherwise makes it (trains
or imports it) and stores it. Every epoch is logged to the run, and the curves are kept for the
plot (`histories`).
"""

from __future__ import annotations

import zlib
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdexp.config.identity import digest, imported_key_for, key_for, logits_key_for, stable_section
from kdexp.data.source import Source
from kdexp.distill.compose import FrozenLogits
from kdexp.distill.functional import labels_only
from kdexp.distill.phase import History, Phase, PredictFn
from kdexp.models import factory as models_mod
from kdexp.run import distributed, teacher_import
from kdexp.run.checkpoints import Checkpoints
from kdexp.run.console import PhaseProgress, console
from kdexp.run.loop import Diverged, Loop, autocast, evaluate
from kdexp.run.model_store import ModelStore

# A teacher whose test accuracy ends at most this multiple of chance (100 / classes %) learned
# nothing: distilling from it would be no result.
CHANCE_FACTOR = 1.5

StoreKey = tuple[str, dict]  # (hex key, the payload it hashes): kdexp/config/identity.py


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


def role_seed(seed: int, role: str) -> int:
    """A seed per role, stable across runs: same role and `seed` → same init and batch order."""
    return (seed * 1_000_003 + zlib.crc32(role.encode())) % 2**31


def supervised_key(cfg: DictConfig, model_cfg, init_role: str, epochs: int, augment: bool,
                   variant: str | None = None) -> StoreKey:
    """The model-store key of `model_cfg` trained on labels from the init and batch order of
    `init_role` (a teacher: its own role; a baseline: its student's); `variant` names a model
    trained some other way (the exits of a multi-exit net)."""
    return key_for(stable_section("model", model_cfg), stable_section("data", cfg.data),
                   stable_section("optim", cfg.optim), epochs, augment, role_seed(cfg.seed, init_role),
                   precision=cfg.trainer.precision, variant=variant, sync_bn=bool(cfg.trainer.sync_bn))


class Context:
    def __init__(self, cfg: DictConfig, source: Source, run, device: torch.device,
                 checkpoints: Checkpoints | None = None, store: ModelStore | None = None):
        self.cfg = cfg
        self.source = source
        self.run = run
        self.device = device
        self.checkpoints = checkpoints
        self.store = store
        self.histories: dict[str, History] = {}
        self.store_keys: dict[str, str] = {}  # role → key of the model-store entry its model came from
        self.loop = Loop(source, cfg.optim, PhaseProgress(cfg.trainer.progress), self._log_epoch,
                         precision=cfg.trainer.precision)

    # --- seeds and models ---
    def seed(self, role: str) -> int:
        """A seed per role, stable across runs: same role and `seed` → same init and batch order."""
        return role_seed(self.cfg.seed, role)

    def build(self, model_cfg, role: str) -> nn.Module:
        model = models_mod.build(model_cfg, self.source.input_shape, self.source.num_classes, self.seed(role))
        model = model.to(self.device)
        if self.cfg.trainer.sync_bn:
            model = distributed.sync_batchnorm(model)
        if self.cfg.trainer.channels_last:  # a conv runs channels-last when its weight is: inputs follow
            model = model.to(memory_format=torch.channels_last)
        if self.cfg.trainer.compile:
            model.compile()  # in place: parameter names, hence state dicts, stay those of the model
        return model

    @staticmethod
    def describe(model_cfg) -> str:
        return models_mod.describe(model_cfg)

    @property
    def augment_students(self) -> bool:
        return bool(self.cfg.data.augment)

    def probe_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Two training inputs and their indices: what methods size their trainable parts from."""
        x = self.source.sample(2)
        return x, torch.arange(2, device=x.device)

    # --- training and judging ---
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

    def evaluate(self, predict: PredictFn, models: dict[str, nn.Module],
                 precision: str | None = None) -> dict[str, dict[str, float]]:
        """`{split: {model: accuracy %}}` on the held-out splits there are (test, and val)."""
        precision = self.cfg.trainer.precision if precision is None else precision
        return {name: evaluate(predict, models, self.source, name, precision) for name in self.source.eval_splits}

    def val_acc(self, history: History, name: str) -> float | None:
        key = f"{name}/val_acc"
        return history.last(key) if key in history.metrics else None

    # --- frozen models: one way, through the model store ---
    def teacher(self, model_cfg, role: str = "teacher") -> tuple[nn.Module, History]:
        """A teacher trained on labels (or imported: `checkpoint`), returned frozen (eval mode, no gradients)."""
        t = self.cfg.trainer
        if model_cfg.get("checkpoint"):
            model, history = self._imported(model_cfg, role)
        else:
            model, history = self.on_labels(model_cfg, role, role, t.teacher_epochs,
                                             bool(self.cfg.data.augment or t.teacher_augment))
        self._refuse_chance_level(history, role)
        model.eval().requires_grad_(False)
        return model, history

    def baseline(self, model_cfg, init_role: str, role: str = "baseline") -> History:
        """The student trained alone from the same initialisation and schedule as `init_role`."""
        return self.on_labels(model_cfg, role, init_role, self.cfg.trainer.epochs, self.augment_students)[1]

    def on_labels(self, model_cfg, role: str, init_role: str, epochs: int, augment: bool) -> tuple[nn.Module, History]:
        """`model_cfg` trained on the labels alone, logged under `role`; init and batch order come
        from `init_role`, so a baseline shares its student's starting point and schedule."""
        model = self.build(model_cfg, init_role)
        phase = Phase(
            name=role,
            models={role: model},
            step_loss=lambda x, y, idx: labels_only(model(x), y),
            predict=lambda x: {role: model(x)},
            epochs=epochs,
            seed=self.seed(init_role),
            augment=augment,
        )
        return model, self.stored_phase(phase, model_cfg, init_role, f"{role} {self.describe(model_cfg)}")

    def stored_phase(self, phase: Phase, model_cfg, init_role: str, label: str,
                     variant: str | None = None) -> History:
        """`phase`, whose one model is `model_cfg` seeded by `init_role`, trained — or its model
        loaded from the model store when the same training was stored before (`store.reuse`)."""
        [model] = phase.models.values()
        key = supervised_key(self.cfg, model_cfg, init_role, phase.epochs, phase.augment, variant)
        return self._obtain(phase.name, model, key, label, lambda: self.train(phase))

    def teacher_stage(self, phase: Phase, teacher_role: str, identity: dict) -> History:
        """A method's stage that depends on the frozen model served under `teacher_role` alone (FT's
        paraphraser; `identity`: the method settings and seed it was built from): loaded from the
        model store when the same stage of the same stored teacher was trained before, otherwise
        trained and stored. A teacher the store did not serve: trained."""
        teacher_key = self.store_keys.get(teacher_role)
        if self.store is None or teacher_key is None:
            return self.train(phase)
        [model] = phase.models.values()
        optim = OmegaConf.to_container(stable_section("optim", self.cfg.optim), resolve=True)
        payload = {"stage_of": teacher_key, "stage": phase.name, **identity, "epochs": phase.epochs,
                   "augment": phase.augment, "seed": phase.seed, "optim": optim,
                   "precision": str(self.cfg.trainer.precision)}
        label = f"{phase.name} of {teacher_role} {teacher_key[:8]}"
        return self._obtain(phase.name, model, (digest(payload), payload), label, lambda: self.train(phase))

    def _imported(self, model_cfg, role: str) -> tuple[nn.Module, History]:
        """A teacher whose weights come from `model_cfg.checkpoint` (kdexp/run/teacher_import.py), not
        trained: its accuracies are measured once and logged as a one-epoch teacher's, and the
        import is a store entry keyed by the weights' identity, so a sweep imports it once and
        its students share its cached logits as they share a trained teacher's."""
        # multi_teacher's teachers are roles teacher0, teacher1, ... of loss.teachers[0], [1], ...
        index = role.removeprefix("teacher")
        config_key = f"loss.teachers[{index}].checkpoint" if index else "teacher.checkpoint"
        ref = str(model_cfg.checkpoint)
        model = self.build(model_cfg, role)
        source = teacher_import.source_of(ref, config_key)

        def make() -> History:
            teacher_import.import_weights(model, model_cfg, config_key)
            console.print(f"[bold]{role}[/bold]: imported from {ref}, not trained", highlight=False)
            accs = self.evaluate(lambda x: {role: model(x)}, {role: model})
            return self._record(role, {f"{role}/{split}_acc": [a[role]] for split, a in accs.items()})

        self.run.tags({f"kdexp.{role}.checkpoint": ref})
        key = imported_key_for(stable_section("model", model_cfg), self.cfg.data, source, self.cfg.trainer.precision)
        tags = {"kdexp.imported_from": ref, **{f"kdexp.imported.{k}": str(v) for k, v in source.items()}}
        label = f"{role} {self.describe(model_cfg)} imported"
        return model, self._obtain(role, model, key, label, make, tags, made="imported")

    def _obtain(self, role: str, model: nn.Module, key: StoreKey, label: str, make: Callable[[], History],
                tags: dict | None = None, made: str = "trained") -> History:
        """`model` loaded from the model-store entry of `key`, or made by `make()` (which trains or
        imports it, logs its curves and returns them) and stored with `tags`. Without a model
        store, made."""
        if self.store is None:
            return make()
        digest, payload = key
        with self.store.entry(digest, payload, label) as entry:
            if entry.found:
                model.load_state_dict(entry.state)
                history, source = self._record(role, _with_prefix(entry.history, role)), "store"
            else:  # made while the key's lock is held: parallel jobs of a sweep make it once
                history, source = make(), made
                entry.save(model.state_dict(), _without_prefix(history.metrics, role), tags)
                if entry.stored_elsewhere:  # another machine's entry won: its weights, as later runs load them
                    model.load_state_dict(entry.state)
        self.store_keys[role] = digest
        self.run.tags({f"kdexp.{role}.source": source, f"kdexp.{role}.lineage": entry.run_id})
        if source == "store":
            console.print(f"[bold]{role}[/bold]: loaded from the model store (run {entry.run_id}, key {digest[:8]})")
        return history

    def _record(self, role: str, metrics: dict[str, list[float]]) -> History:
        """Curves not logged by the loop (a stored or imported model's) logged as this run's, epoch by epoch."""
        history = History(metrics)
        for epoch in range(1, len(next(iter(metrics.values()), [])) + 1):
            self.run.metrics({k: v[epoch - 1] for k, v in metrics.items()}, step=epoch)
        self.histories[role] = history
        return history

    def _refuse_chance_level(self, history: History, role: str) -> None:
        """A teacher at chance level fails the run before any student is distilled from it."""
        acc, chance = history.last(f"{role}/test_acc"), 100.0 / self.source.num_classes
        if self.cfg.trainer.fail_at_chance and acc <= CHANCE_FACTOR * chance:
            raise Diverged(f"{role} ended at chance level ({acc:.2f} % on {self.source.num_classes} classes, "
                           f"chance {chance:.2f} %); the run FAILED before distilling a student; likely cause: "
                           f"optim.lr={self.cfg.optim.lr:g} (too high or too low), or too few trainer.teacher_epochs "
                           f"(trainer.fail_at_chance=false lets it pass)")

    # --- frozen models' logits ---
    def frozen_logits(self, model: nn.Module, role: str | None = None) -> FrozenLogits:
        """`(x, idx) → logits` of a frozen model. When students see unaugmented inputs the logits of
        the whole training split are computed once and looked up by index; otherwise per batch.
        Per batch, the loop's autocast applies; the cache is computed under the same precision and
        kept as float32 on the data's device. A model the store served under `role` keeps its
        cache in the store too, so every student of a sweep reuses one pass over the data."""
        if self.augment_students:  # augmented inputs (a stream's crops too): a cache would be stale
            def per_batch(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
                with torch.inference_mode():  # no autograd bookkeeping at all for the teacher
                    logits = model(x)
                return logits.clone()  # a normal tensor: a method may save it for the backward pass
            return per_batch
        model.eval()

        def compute() -> torch.Tensor:
            with torch.no_grad(), autocast(self.device, self.cfg.trainer.precision):
                parts = [(idx, model(x).float()) for x, _, idx in self.source.eval_batches("train")]
            logits = torch.zeros(self.source.size("train"), parts[0][1].shape[1], device=self.device)
            for idx, part in parts:
                logits[idx] = part
            return distributed.sum_(logits)  # each rank computed its shard's rows (zeros elsewhere)

        cached = self._stored_logits(role, compute) if role in self.store_keys else compute()
        return lambda x, idx: cached.index_select(0, idx)  # = cached[idx], faster for small batches

    def _stored_logits(self, role: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`compute()`'s logits of the stored model served under `role`, from the store or into it."""
        key, payload = logits_key_for(self.store_keys[role], self.cfg.trainer.precision)
        with self.store.entry(key, payload, f"logits of {role} {self.store_keys[role][:8]}") as entry:
            hit = entry.found
            if hit:
                logits = entry.state["train"].to(self.device)
            else:
                logits = compute()
                entry.save({"train": logits.cpu()}, {})
        self.run.tags({f"kdexp.{role}.logits": "store" if hit else "computed"})
        return logits
