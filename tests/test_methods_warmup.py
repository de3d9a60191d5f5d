"""A recipe's warm-up is its fraction of the run (issue 28: DKD's 20 epochs in a 3-epoch run never
reached full weight, silently), and so is a method's own stage (FT, AB, FSP: 30 of 240 epochs)."""

import pytest

from conftest import compose_cfg
from kdexp.config.checks import ConfigError
from kdexp.distill.methods.warmup import ramp


@pytest.mark.parametrize("epochs, expected", [(240, 20), (20, 2), (3, 0), (120, 10)])
def test_dkd_warmup_is_the_recipes_fraction_of_trainer_epochs(epochs, expected):
    assert compose_cfg(["kd=dkd", f"trainer.epochs={epochs}"], fast=False).kd.warmup == expected


@pytest.mark.parametrize("epochs, expected", [(240, 10), (20, 1), (3, 0)])
def test_ctkd_curriculum_is_the_recipes_fraction_of_trainer_epochs(epochs, expected):
    assert compose_cfg(["kd=ctkd", f"trainer.epochs={epochs}"], fast=False).kd.warmup == expected


@pytest.mark.parametrize("epochs, expected", [(240, 20), (20, 2), (3, 0)])
def test_reviewkd_warmup_is_the_recipes_fraction_of_trainer_epochs(epochs, expected):
    cfg = compose_cfg(["hint=reviewkd", "model@student=cnn", f"trainer.epochs={epochs}"], fast=False)
    assert cfg.hint.warmup == expected


def test_a_warmup_the_user_sets_is_kept_and_reaches_full_weight():
    cfg = compose_cfg(["kd=dkd", "trainer.epochs=3", "kd.warmup=3"], fast=False)
    assert cfg.kd.warmup == 3 and [ramp(e, 3) for e in (1, 2, 3)] == [1 / 3, 2 / 3, 1.0]
    assert ramp(1, 0) == 1.0


def test_a_warmup_longer_than_the_run_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        compose_cfg(["kd=dkd", "trainer.epochs=3", "kd.warmup=20"], fast=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith("kd.warmup=20 is not allowed")
    assert "[0, trainer.epochs=3]" in message and "null" in message


def test_the_resolved_warmup_is_in_the_run_key():
    from kdexp.config.identity import run_key

    short = compose_cfg(["kd=dkd", "trainer.epochs=20"], fast=False)
    pinned = compose_cfg(["kd=dkd", "trainer.epochs=20", "kd.warmup=2"], fast=False)
    assert run_key(short, "cpu") == run_key(pinned, "cpu")
    assert run_key(short, "cpu") != run_key(compose_cfg(["kd=dkd", "kd.warmup=20"], fast=False), "cpu")


@pytest.mark.parametrize("method", ["ft", "ab", "fsp"])
@pytest.mark.parametrize("epochs, expected", [(240, 30), (20, 2), (2, 1), (1, 1)])
def test_a_methods_own_stage_is_the_recipes_30_of_240_epochs_scaled_and_at_least_one(method, epochs, expected):
    cfg = compose_cfg([f"hint={method}", "model@student=cnn", f"trainer.epochs={epochs}"], fast=False)
    assert cfg.hint.init_epochs == expected


def test_a_stage_length_the_user_sets_is_kept_in_the_run_key_and_zero_is_refused_in_one_line():
    from kdexp.config.identity import run_key

    scaled = compose_cfg(["hint=ft", "model@student=cnn", "trainer.epochs=240"], fast=False)
    pinned = compose_cfg(["hint=ft", "model@student=cnn", "trainer.epochs=240", "hint.init_epochs=30"], fast=False)
    assert pinned.hint.init_epochs == 30 and run_key(scaled, "cpu") == run_key(pinned, "cpu")
    assert compose_cfg(["hint=ab", "model@student=cnn", "trainer.epochs=2", "hint.init_epochs=5"],
                       fast=False).hint.init_epochs == 5
    with pytest.raises(ConfigError) as err:
        compose_cfg(["hint=fsp", "hint.init_epochs=0"], fast=False)
    assert "\n" not in str(err.value) and str(err.value).startswith("hint.init_epochs=0 is not allowed")
