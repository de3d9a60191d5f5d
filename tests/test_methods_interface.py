"""The pre-flight check (kdexp/run/preflight.py check_methods_fit) on the methods with several layers,
state and stages: a model without the layers a method needs is refused in one line before training,
and CRD's state is sized from the training set the check hands it."""

import pytest
import torch

from conftest import compose_cfg
from kdexp.config.checks import ConfigError
from kdexp.data import memory as data_mod
from kdexp.run.preflight import check_methods_fit


@pytest.fixture(scope="module")
def mnist5k():
    cfg = compose_cfg([]).data
    return data_mod.MemorySource(data_mod.load(cfg), cfg, torch.device("cpu"))


REFUSED = [
    # The default pair: the cnn teacher's pre-ReLU maps are taken, the MLP student has no maps.
    (["hint=ofd"], "hint.student='stages.0.1:input' gives features of shape (128,); hint=ofd needs feature maps"),
    (["hint=ofd", "model@student=cnn", "teacher.batch_norm=false"],
     "its block 'stages.0' has no batch norm of its own to take hint=ofd's margin from; use a teacher with batch norms"),
    (["hint=fsp", "model@student=cnn", "student.channels=[8,16]"], "hint=fsp needs feature maps with as many channels"),
    (["hint=ft"], "hint=ft needs feature maps (C, H, W)"),
    (["hint=ab"], "hint=ab needs feature maps (C, H, W)"),
    (["hint=reviewkd", "hint.student=[stages.0]", "hint.teacher=[nope]"], "hint.teacher='nope' is not a layer of this model"),
    (["hint=crd", "hint.student=stages.9"], "hint.student='stages.9' is not a layer of this model"),
]


@pytest.mark.parametrize("overrides, needle", REFUSED, ids=[" ".join(r[0]) for r in REFUSED])
def test_a_model_without_the_layers_a_method_needs_is_refused_in_one_line(mnist5k, overrides, needle):
    with pytest.raises(ConfigError) as err:
        check_methods_fit(compose_cfg(overrides), mnist5k)
    assert "\n" not in str(err.value) and needle in str(err.value), str(err.value)


@pytest.mark.parametrize("overrides", [
    ["hint=crd"],
    ["hint=reviewkd", "model@student=cnn", "student.channels=[8,16]"],
    ["hint=ofd", "model@teacher=resnet8", "model@student=resnet8"],
    ["hint=ft", "model@student=cnn"],
    ["hint=fsp", "model@student=cnn"],
    ["hint=ab", "model@teacher=resnet8", "model@student=resnet8", "student.widths=[8,8,16,32]"],
    ["hint=at", "model@teacher=resnet8", "model@student=resnet8"],
], ids=lambda o: " ".join(o))
def test_the_recipe_layers_fit(mnist5k, overrides):
    check_methods_fit(compose_cfg(overrides), mnist5k)
