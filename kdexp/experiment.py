"""One experiment: data loaded once, the chosen family run through a `Context`, everything tracked.

The `Context` is what a family may use: build a model from a seed derived from its role, train a
phase through the shared loop, get a frozen teacher or a student-alone baseline, and reuse a
frozen model's logits. It logs every epoch to the run and keeps the curves for the plot.
"""

from __future__ import annotations

import gc
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
from kdexp import store as store_mod
from kdexp.checkpoint import Checkpoints
from kdexp.config import ConfigError
from kdexp.console import PhaseProgress, console, summary
from kdexp.losses import labels_only
from kdexp.store import ModelStore
from kdexp.train import History, Loop, Phase, autocast

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


def available_devices() -> list[str]:
    """The `trainer.device` values this machine can run, besides `auto`."""
    here = ["cpu"]
    if torch.cuda.is_available():
        here.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        here.append("mps")
    return here


def resolve_device(name: str, precision: str = "32") -> torch.device:
    """`trainer.device` → a torch device (auto: cuda, else mps, else cpu). A device this machine
    lacks, or bf16 on one that cannot run it, is refused in one line."""
    here = available_devices()
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if d in here)
    elif name not in here:
        raise ConfigError(f"trainer.device={name} is not available on this machine; "
                          f"available here: {', '.join(['auto', *here])}")
    device = torch.device(name)
    if str(precision) == "bf16" and not _bf16_works(device):
        raise ConfigError(f"trainer.precision=bf16 is not supported on this {name} device; use trainer.precision=32")
    return device


def describe_device(device: torch.device, precision: str, compiled: bool = False) -> str:
    """`cuda:0 (NVIDIA H100 80GB HBM3), bf16 autocast, compiled`: where and how a run trained, for
    its tags and summary."""
    name = str(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    how = "bf16 autocast" if str(precision) == "bf16" else "float32"
    return f"{name}, {how}{', compiled' if compiled else ''}"


def _bf16_works(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # cpu always; mps from macOS 14
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except (RuntimeError, TypeError):
        return False
    return True


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
        return (self.cfg.seed * 1_000_003 + zlib.crc32(role.encode())) % 2**31

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
        key = store_mod.key_for(model_cfg, self.cfg.data, self.cfg.optim, epochs, augment, seed,
                                precision=self.cfg.trainer.precision)
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

        digest, payload = key
        source, store_run, generic = self.store.get_or_train(digest, payload, label, model.load_state_dict, train)
        self.store_keys[role] = digest
        self.run.tags({f"kdexp.{role}.source": source, f"kdexp.{role}.lineage": store_run})
        if source == "store":
            history = History(_with_prefix(generic, role))
            for epoch in range(1, len(history.metrics.get(f"{role}/loss", [])) + 1):
                self.run.metrics({k: v[epoch - 1] for k, v in history.metrics.items()}, step=epoch)
            self.histories[role] = history
            console.print(f"[bold]{role}[/bold]: loaded from the model store (run {store_run}, key {digest[:8]})")
            return history
        return self.histories[role]

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
        return lambda x, idx: cached[idx]

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


def _model_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """Every model config in the experiment: teacher, student, and the lists some families add."""
    found = {"teacher": cfg.teacher, "student": cfg.student}
    for key, value in cfg.loss.items():
        if OmegaConf.is_list(value):
            found.update({f"loss.{key}[{i}]": m for i, m in enumerate(value)
                          if OmegaConf.is_dict(m) and "name" in m})
    return found


def check_models_fit(cfg: DictConfig, dataset: data_mod.Dataset) -> None:
    """Build every model once and push two samples through it, so that a model that does not fit
    the data's shape is refused in one line before any run starts."""
    sample = dataset.train.x[:2]
    for where, model_cfg in _model_configs(cfg).items():
        try:
            model = models_mod.build(model_cfg, dataset.input_shape, dataset.num_classes, seed=0)
            with torch.no_grad():
                model.eval()(sample)
        except ConfigError as err:  # the builder names the section "model."; say which one it is
            raise ConfigError(str(err).replace("model.", f"{where}.", 1)) from None
        except (RuntimeError, ValueError) as err:
            cause = " ".join(str(err).split())[:200]
            raise ConfigError(f"{where}={models_mod.describe(model_cfg)} does not fit {cfg.data.name} "
                              f"inputs {tuple(dataset.input_shape)}: {cause}") from None


def _roles(cfg: DictConfig) -> tuple[str, str]:
    """(teacher, student) as the family actually uses them, for tags and run names: several
    teachers, peers trained together, or a model that is its own teacher."""
    loss, describe = cfg.loss, models_mod.describe
    student = describe(cfg.student)
    if loss.name == "multi_teacher":
        return "+".join(describe(t) for t in loss.teachers), student
    if loss.name == "online":
        return "(online peers)", "+".join(describe(p) for p in loss.peers)
    if loss.name == "self":
        return "(itself)", student
    if loss.name == "none":
        return "(none)", student
    return describe(cfg.teacher), student


def run_tags(cfg: DictConfig, overrides: list[str]) -> dict[str, str]:
    from kdexp.tracking import git_commit

    teacher, student = _roles(cfg)
    tags = {
        "loss_family": cfg.loss.name,
        "teacher": teacher,
        "student": student,
        "dataset": cfg.data.name,
        "overrides": " ".join(overrides) or "(none)",
    }
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


def default_run_name(cfg: DictConfig, overrides: list[str]) -> str:
    if overrides:
        return " ".join(overrides)
    teacher, student = _roles(cfg)
    return f"{cfg.loss.name} {teacher}→{student}"


def run(cfg: DictConfig, overrides: list[str], hydra_dir: Path | None = None,
        parent_run_id: str | None = None) -> float:
    """Train and track one experiment described by a validated config; returns the objective.

    The run's identity is its config (`checkpoint.run_key`). With `trainer.rerun=skip` (default) a
    FINISHED run of the same config is not repeated, and an interrupted one (RUNNING after a crash,
    FAILED, KILLED) is resumed in place from its checkpoints; `trainer.rerun=force` starts anew."""
    try:
        return _run(cfg, overrides, hydra_dir, parent_run_id)
    finally:
        # A run's objects hold reference cycles (the context logs through its own bound method,
        # phases close over their models), which only the cyclic collector frees, and it counts
        # objects, not bytes. Without this, each job of an in-process sweep (Hydra's basic
        # launcher, a joblib worker) kept the data set and models of the jobs before it.
        gc.collect()


def _run(cfg: DictConfig, overrides: list[str], hydra_dir: Path | None, parent_run_id: str | None) -> float:
    from kdexp import tracking
    from kdexp.checkpoint import run_key, run_lock

    started = time.perf_counter()  # wall time includes loading data and opening the store
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    device = resolve_device(cfg.trainer.device, cfg.trainer.precision)
    dataset = data_mod.load(cfg.data)
    check_models_fit(cfg, dataset)
    dataset = dataset.to(device)
    tracking.prepare(cfg.tracking.uri, cfg.tracking.experiment)
    key = run_key(cfg, device.type)
    with run_lock(cfg.trainer.checkpoint_dir, key):
        previous = tracking.find_run(cfg.tracking.experiment, key) if cfg.trainer.rerun == "skip" else None
        if previous is not None and previous.status == "FINISHED":
            console.print(f"kdexp: this exact config already FINISHED as MLflow run {previous.run_id}; "
                          f"skipped (trainer.rerun=force runs it again)")
            if parent_run_id:
                tracking.note_reused(parent_run_id, overrides, previous.run_id)
            return previous.objective
        resume_id = previous.run_id if previous is not None else None
        tags = {**run_tags(cfg, overrides), "kdexp.run_key": key,
                "kdexp.role": "job" if parent_run_id else "single",
                "kdexp.device": describe_device(device, cfg.trainer.precision, cfg.trainer.compile)}
        run = tracking.Run(cfg.tracking, default_run_name(cfg, overrides), tags, parent_run_id, resume_id)
        if resume_id:
            console.print(f"kdexp: resuming MLflow run {resume_id} ({previous.status}) from its checkpoints")
        checkpoints = Checkpoints(cfg.trainer.checkpoint_dir, key, run.run_id)
        return _track(cfg, hydra_dir, dataset, device, run, checkpoints, started)


def _track(cfg, hydra_dir, dataset, device, run, checkpoints, started: float) -> float:
    """Everything inside the MLflow run: a raise ends it FAILED (KILLED on Ctrl-C or SIGTERM),
    error recorded, checkpoints kept for the resume; a FINISHED run's checkpoints are removed
    unless `trainer.keep_checkpoints`."""
    from kdexp import plots
    from kdexp.methods import REGISTRY

    try:
        changed = run.params(config_mod.flatten(cfg))
        if changed:
            console.print(f"kdexp: resumed with other values of {', '.join(changed)} (settings that do not "
                          f"change results); recorded as tags kdexp.resumed_with.*", markup=False)
        run.text(OmegaConf.to_yaml(cfg), "config.yaml")
        if hydra_dir is not None:
            run.folder(hydra_dir, "hydra")
        store = ModelStore(cfg.store, cfg.tracking)
        ctx = Context(cfg, dataset, run, device, checkpoints, store)
        outcome = REGISTRY[cfg.loss.name](ctx).run()
        wall = time.perf_counter() - started
        outcome.metrics["wall_time_s"] = wall
        run.metrics(outcome.metrics)
        run.tags({"kdexp.objective": outcome.objective})
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
    if not cfg.trainer.keep_checkpoints:
        checkpoints.remove()  # only for resuming, and a FINISHED run is never resumed
    rows = outcome.rows + [("device", describe_device(device, cfg.trainer.precision, cfg.trainer.compile)), ("wall time", f"{wall:.1f} s")]
    summary(f"kdexp · {cfg.loss.name} · {cfg.data.name}", rows,
            [f"MLflow run {run.run_id} in experiment '{cfg.tracking.experiment}' of {run.where()}",
             f"open the UI: {run.ui_hint()}"])
    return float(outcome.metrics[outcome.objective])
