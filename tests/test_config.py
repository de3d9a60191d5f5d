"""The schema: composed configs are typed, and bad values stop with one line naming the key."""

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from conftest import compose_cfg, compose_raw
from kdexp.config.sections import ConfigError, flatten, validate


def test_default_config_composes_and_validates():
    cfg = compose_cfg(fast=False)
    assert cfg.loss.name == "standard"
    assert cfg.teacher.name == "cnn" and cfg.student.name == "mlp"
    assert cfg.data.name == "mnist5k"
    assert "hydra" not in cfg


def test_seed_article_preset_is_the_article():
    cfg = compose_cfg(["experiment=seed_article"], fast=False)
    assert list(cfg.teacher.hidden) == [512, 256] and list(cfg.student.hidden) == [128]
    assert (cfg.loss.temperature, cfg.loss.alpha) == (3.0, 0.5)
    assert (cfg.optim.name, cfg.optim.lr) == ("adam", 0.001)
    assert (cfg.data.name, cfg.data.batch_size, cfg.data.eval_batch_size) == ("mnist", 64, 1000)
    assert (cfg.trainer.epochs, cfg.trainer.teacher_epochs) == (5, 5)
    assert not cfg.data.augment and not cfg.trainer.teacher_augment


@pytest.mark.parametrize(
    "override, key",
    [
        ("loss.temperature=0", "loss.temperature"),
        ("loss.temperature=-2", "loss.temperature"),
        ("loss.alpha=1.5", "loss.alpha"),
        ("loss.alpha=-0.1", "loss.alpha"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.teacher_epochs=0", "trainer.teacher_epochs"),
        ("data.batch_size=0", "data.batch_size"),
        ("optim.lr=0", "optim.lr"),
        ("optim.name=rmsprop", "optim.name"),
        ("trainer.device=tpu", "trainer.device"),
        ("student.dropout=1.0", "student.dropout"),
        ("student.hidden=[0]", "student.hidden"),
        ("trainer.epochs=abc", "trainer.epochs"),
        ("loss.temperature=hot", "loss.temperature"),
        ("+loss.temprature=3", "loss.temprature"),
        ("+trainer.foo=1", "trainer.foo"),
        ("+bogus=1", "bogus"),
        ("seed=abc", "seed"),
    ],
)
def test_bad_values_are_refused_with_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        validate(compose_raw([override]))
    message = str(err.value)
    assert "\n" not in message
    assert key in message


def test_unknown_key_lists_the_allowed_keys():
    with pytest.raises(ConfigError, match="temperature"):
        validate(compose_raw(["+loss.temprature=3"]))


def test_typed_config_is_read_only_and_typed():
    cfg = compose_cfg(["loss.temperature=8"])
    assert isinstance(cfg.loss.temperature, float) and cfg.loss.temperature == 8.0
    with pytest.raises(ReadonlyConfigError):
        cfg.loss.temperature = 2.0
    assert cfg.loss.temperature == 8.0


def test_flatten_gives_dotted_params():
    flat = flatten(compose_cfg())
    assert flat["loss.temperature"] == "4.0"
    assert flat["teacher.channels"] == "[32, 64]"
    # Leaves only, each the resolved value at its dotted path, and every section of the config there.
    cfg = compose_cfg()
    assert all(str(OmegaConf.select(cfg, key)) == value for key, value in flat.items())
    assert not any(other.startswith(key + ".") for key in flat for other in flat)
    assert {key.split(".")[0] for key in flat} == set(cfg.keys())
