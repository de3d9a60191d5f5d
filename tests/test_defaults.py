"""One source of defaults (issue 15 §3): the YAML option named like a schema repeats that schema's
defaults exactly, for every group (families and distillation methods included), so that a value never
means one thing in `kdexp --cfg job` and another in the dataclass."""

import pytest
from omegaconf import OmegaConf

from kdexp.config import sections as config
from kdexp.config.models import CNNConfig, MLPConfig, ResNetConfig, TorchvisionConfig
from kdexp.config.paths import CONFIG_DIR
from kdexp.config.registry import SECTIONS

FIXED = {
    "data/mnist5k": config.DataConfig,
    "model/mlp": MLPConfig,
    "model/cnn": CNNConfig,
    "model/resnet20": ResNetConfig,
    "model/torchvision": TorchvisionConfig,
    "optim/adam": config.OptimConfig,
    "trainer/default": config.TrainerConfig,
    "store/default": config.StoreConfig,
    "tracking/default": config.TrackingConfig,
}
BY_REGISTRY = {f"{group}/{name}": cls.schema for group, registry in SECTIONS.items() for name, cls in registry.items()}


def schema_defaults(schema) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(schema))


@pytest.mark.parametrize("option, schema", {**FIXED, **BY_REGISTRY}.items(), ids=list({**FIXED, **BY_REGISTRY}))
def test_yaml_option_repeats_its_schema_defaults(option, schema):
    yaml = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{option}.yaml"))
    yaml.pop("defaults", None)
    defaults = schema_defaults(schema)
    typed = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), yaml))  # YAML typed as the schema
    unknown = set(yaml) - set(defaults)
    assert not unknown, f"{option}.yaml sets keys its schema lacks: {unknown}"
    differ = {k: (typed[k], defaults[k]) for k in yaml if typed[k] != defaults[k]}
    assert not differ, f"{option}.yaml (left) disagrees with {schema.__name__} (right): {differ}"
