"""The schemas of the models (`model@teacher`, `model@student`, and the lists of models some
families take: `loss.teachers`, `loss.peers`) and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from kdexp.config.paths import CONFIG_DIR
from kdexp.config.checks import ConfigError, by_name, require


@dataclass
class MLPConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [128])
    dropout: float = 0.0
    # A trained model to import instead of training one (teachers only): a .pt/.pth state-dict
    # file or an MLflow model URI (runs:/..., models:/...); kdexp/run/teacher_import.py.
    checkpoint: Optional[str] = None


@dataclass
class CNNConfig:
    name: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [32, 64])
    fc: int = 128
    dropout: float = 0.3
    batch_norm: bool = True
    # A trained model to import instead of training one (teachers only): a .pt/.pth state-dict
    # file or an MLflow model URI (runs:/..., models:/...); kdexp/run/teacher_import.py.
    checkpoint: Optional[str] = None


@dataclass
class ResNetConfig:
    """CIFAR-style ResNet (kdexp/models/resnets.py): depth = 6n + 2; widths = stem and the 3 stages."""

    name: str = "resnet"
    depth: int = 20
    widths: list[int] = field(default_factory=lambda: [16, 16, 32, 64])
    dropout: float = 0.0
    # A trained model to import instead of training one (teachers only): a .pt/.pth state-dict
    # file or an MLflow model URI (runs:/..., models:/...); kdexp/run/teacher_import.py.
    checkpoint: Optional[str] = None


@dataclass
class WRNConfig:
    """Wide ResNet WRN-depth-widen (kdexp/models/wrn.py): depth = 6n + 4."""

    name: str = "wrn"
    depth: int = 40
    widen: int = 2
    # A trained model to import instead of training one (teachers only): a .pt/.pth state-dict
    # file or an MLflow model URI (runs:/..., models:/...); kdexp/run/teacher_import.py.
    checkpoint: Optional[str] = None


@dataclass
class VGGConfig:
    """VGG with batch norm for CIFAR (kdexp/models/vgg.py): depth 8, 11, 13, 16 or 19."""

    name: str = "vgg"
    depth: int = 13
    # A trained model to import instead of training one (teachers only): a .pt/.pth state-dict
    # file or an MLflow model URI (runs:/..., models:/...); kdexp/run/teacher_import.py.
    checkpoint: Optional[str] = None


@dataclass
class ResNetBottleneckConfig:
    """CIFAR ResNet of bottleneck blocks (kdexp/models/resnet_bottleneck.py): [3, 4, 6, 3] is ResNet-50."""

    name: str = "resnet_bottleneck"
    blocks: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    # A trained model to import instead of training one (teachers only): a .pt/.pth state-dict
    # file or an MLflow model URI (runs:/..., models:/...); kdexp/run/teacher_import.py.
    checkpoint: Optional[str] = None


@dataclass
class MobileNetV2Config:
    """MobileNetV2 for CIFAR (kdexp/models/mobilenetv2.py); expansion 6, width 0.5 is the benchmark's."""

    name: str = "mobilenetv2"
    expansion: int = 6
    width: float = 0.5
    # A trained model to import instead of training one (teachers only): a .pt/.pth state-dict
    # file or an MLflow model URI (runs:/..., models:/...); kdexp/run/teacher_import.py.
    checkpoint: Optional[str] = None


@dataclass
class ShuffleNetV1Config:
    """ShuffleNetV1 for CIFAR, groups 3 (kdexp/models/shufflenet.py)."""

    name: str = "shufflenet_v1"
    # A trained model to import instead of training one (teachers only): a .pt/.pth state-dict
    # file or an MLflow model URI (runs:/..., models:/...); kdexp/run/teacher_import.py.
    checkpoint: Optional[str] = None


@dataclass
class ShuffleNetV2Config:
    """ShuffleNetV2 for CIFAR (kdexp/models/shufflenet.py): net size 0.5, 1.0, 1.5 or 2.0."""

    name: str = "shufflenet_v2"
    size: float = 1.0
    # A trained model to import instead of training one (teachers only): a .pt/.pth state-dict
    # file or an MLflow model URI (runs:/..., models:/...); kdexp/run/teacher_import.py.
    checkpoint: Optional[str] = None


@dataclass
class TorchvisionConfig:
    """Any torchvision classification model by name (kdexp/models/tv_models.py)."""

    name: str = "torchvision"
    arch: str = "resnet18"
    # ImageNet weights from torchvision (fetched once into the torch hub cache; needs internet).
    pretrained: bool = False
    # A trained model to import instead of training one (teachers only): a .pt/.pth state-dict
    # file or an MLflow model URI (runs:/..., models:/...); kdexp/run/teacher_import.py.
    checkpoint: Optional[str] = None


MODEL_SCHEMAS: dict[str, type] = {
    "mlp": MLPConfig, "cnn": CNNConfig, "resnet": ResNetConfig, "wrn": WRNConfig, "vgg": VGGConfig,
    "resnet_bottleneck": ResNetBottleneckConfig, "mobilenetv2": MobileNetV2Config,
    "shufflenet_v1": ShuffleNetV1Config, "shufflenet_v2": ShuffleNetV2Config, "torchvision": TorchvisionConfig}
# Settings of the benchmark nets whose values are a closed list (the reference code's configurations).
VGG_DEPTHS = (8, 11, 13, 16, 19)
SHUFFLENET_V2_SIZES = (0.5, 1.0, 1.5, 2.0)


def check_model(section: str, m: DictConfig) -> None:
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
    check_benchmark_model(section, m)
    if m.name == "torchvision":
        from torchvision import models as tvm

        archs = tvm.list_models(module=tvm)
        require(m.arch in archs, f"{section}.arch", m.arch, f"allowed: {', '.join(archs)}")
    if "dropout" in m:
        require(0.0 <= m.dropout < 1.0, f"{section}.dropout", m.dropout, "must be in [0, 1)")


def check_benchmark_model(section: str, m: DictConfig) -> None:
    """The settings of the CIFAR-100 benchmark nets (wrn, vgg, resnet_bottleneck, mobilenetv2, shufflenet_v2)."""
    if m.name == "wrn":
        require(m.depth >= 10 and (m.depth - 4) % 6 == 0, f"{section}.depth", m.depth,
                "must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...)")
        require(m.widen >= 1, f"{section}.widen", m.widen, "must be >= 1")
    if m.name == "vgg":
        require(m.depth in VGG_DEPTHS, f"{section}.depth", m.depth, f"allowed: {', '.join(map(str, VGG_DEPTHS))}")
    if m.name == "resnet_bottleneck":
        require(len(m.blocks) == 4 and all(b >= 1 for b in m.blocks), f"{section}.blocks", list(m.blocks),
                "4 block counts >= 1 (one per stage; [3, 4, 6, 3] is ResNet-50)")
    if m.name == "mobilenetv2":
        require(m.expansion >= 1, f"{section}.expansion", m.expansion, "must be >= 1")
        require(m.width > 0, f"{section}.width", m.width, "must be > 0")
    if m.name == "shufflenet_v2":
        require(m.size in SHUFFLENET_V2_SIZES, f"{section}.size", m.size,
                f"allowed: {', '.join(map(str, SHUFFLENET_V2_SIZES))}")


def typed_model(section: str, value: Any) -> DictConfig:
    """Validate one model config (used by families that take lists of models)."""
    m = by_name(section, MODEL_SCHEMAS, value)
    check_model(section, m)
    return m


# --- lists of models (loss.teachers, loss.peers) ------------------------------------------


def model_options() -> dict[str, Any]:
    """The model configs of conf/model/ by file name (`cnn`, `mlp`, ...)."""
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
