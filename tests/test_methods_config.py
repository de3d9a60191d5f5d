"""The kd= and hint= groups in the config: composition, bad values refused in one line, and the
layer checks that need the models (before any training)."""

import pytest
import torch

from conftest import compose_cfg
from kdexp.data import memory as data_mod
from kdexp.config.sections import MAX_TEMPERATURE, ConfigError
from kdexp.run.experiment import check_models_fit
from kdexp.config.registry import FAMILIES, HINT_METHODS, KD_METHODS
from kdexp.config.paths import CONFIG_DIR


def test_every_registered_method_has_its_yaml_and_back():
    for group, registry in (("kd", KD_METHODS), ("hint", HINT_METHODS), ("loss", FAMILIES)):
        assert {p.stem for p in (CONFIG_DIR / group).glob("*.yaml")} == set(registry), group


@pytest.mark.parametrize("kd", sorted(KD_METHODS))
def test_each_kd_composes_with_the_standard_family(kd):
    cfg = compose_cfg([f"kd={kd}"])
    assert cfg.kd.name == kd and cfg.hint.name == "none"


def test_an_integer_seed_given_as_text_stays_that_integer(monkeypatch):
    monkeypatch.setenv("KDEXP_TEST_SEED", "7")
    assert compose_cfg(["seed=${oc.env:KDEXP_TEST_SEED}"]).seed == 7


def test_born_again_generations_compose_the_terms():
    cfg = compose_cfg(["loss=self", "loss.mode=born_again", "kd=dkd", "hint=fitnets"])
    assert (cfg.kd.name, cfg.hint.name) == ("dkd", "fitnets")


def test_defaults_are_hinton_and_no_hint():
    cfg = compose_cfg([])
    assert (cfg.kd.name, cfg.kd.standardize, cfg.hint.name) == ("hinton", False, "none")


BAD = [
    (["loss.temperature=inf"], "loss.temperature"),
    (["loss.temperature=nan"], "loss.temperature"),
    ([f"loss.temperature={MAX_TEMPERATURE * 10:g}"], "loss.temperature"),
    (["loss.temperature=1e9"], "loss.temperature"),
    (["seed=1.5"], "seed"),
    (["seed=true"], "seed"),
    (["trainer.epochs=1.5"], "trainer.epochs"),
    (["optim.lr=inf"], "optim.lr"),
    (["kd=dkd", "kd.temperature=-1"], "kd.temperature"),
    (["kd=dkd", "kd.beta=-1"], "kd.beta"),
    (["kd=dkd", "kd.warmup=-1"], "kd.warmup"),
    (["kd=dist", "kd.temperature=inf"], "kd.temperature"),
    (["kd=ls", "kd.kd_weight=-9"], "kd.kd_weight"),
    (["kd=ctkd", "kd.t_min=5", "kd.t_max=2"], "kd.t_max"),
    (["kd=ctkd", "kd.t_max=1000"], "kd.t_max"),
    (["hint=fitnets", "hint.weight=-1"], "hint.weight"),
    (["hint=at"], "model@student"),
    (["hint=at", "model@student=cnn", "model@teacher=mlp"], "model@teacher"),
    (["loss=online", "kd=dkd"], "kd={'name': 'dkd'"),
    (["loss=self", "kd=dkd"], "loss=self does not compose distillation methods here"),
    (["loss=multi_teacher", "hint=fitnets"], "hint={'name': 'fitnets'"),
    (["loss=none", "kd=hinton", "kd.standardize=true"], "'standardize': True}"),
    (["+kd.nope=1"], "kd.nope"),
    (["hint=fitnets", "trainer.compile=true"], "trainer.compile=True is not allowed; hint=fitnets takes features"),
]


@pytest.mark.parametrize("overrides, needle", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_values_are_refused_in_one_line(overrides, needle):
    with pytest.raises(ConfigError) as err:
        compose_cfg(overrides)
    message = str(err.value)
    assert "\n" not in message and needle in message, message


@pytest.fixture(scope="module")
def mnist5k():
    cfg = compose_cfg([]).data
    return data_mod.MemorySource(data_mod.load(cfg), cfg, torch.device("cpu"))


def test_a_layer_the_model_lacks_is_refused_with_its_layer_names(mnist5k):
    cfg = compose_cfg(["hint=fitnets", "hint.student=stages.7"])
    with pytest.raises(ConfigError, match=r"hint.student='stages.7' is not a layer .*its layers: stem, stages, stages.0"):
        check_models_fit(cfg, mnist5k)


def test_at_on_a_layer_without_feature_maps_is_refused(mnist5k):
    cfg = compose_cfg(["hint=at", "model@student=cnn", "hint.student=head.2"])
    with pytest.raises(ConfigError, match="hint.student='head.2' gives features of shape"):
        check_models_fit(cfg, mnist5k)


@pytest.mark.parametrize("overrides", [
    ["hint=fitnets"],
    ["hint=fitnets", "hint.student=stages.0", "hint.teacher=stages.0"],
    ["hint=at", "model@student=cnn", "student.channels=[8,16]"],
    ["hint=at", "model@teacher=resnet8", "model@student=resnet8"],
    ["hint=fitnets", "model@teacher=resnet8x4", "model@student=resnet8"],
])
def test_default_and_named_layers_fit(mnist5k, overrides):
    check_models_fit(compose_cfg(overrides), mnist5k)
