"""The CIFAR-100 benchmark nets kdexp adds to its ResNets (WRN, VGG, ResNet-50, MobileNetV2,
ShuffleNetV1/V2): each against the reference definition written in `cifar_reference.py` — the same
parameter count, a state dict saved in the reference's module layout loads through
`factory.from_benchmark_layout` and then gives the reference's outputs; the stages are where the
reference takes its features; every block that ends in an activation ends in its own `relu`
module, whose input is the reference's pre-ReLU feature."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifar_reference import REFERENCE
from conftest import compose_cfg
from kdexp.config.checks import ConfigError
from kdexp.models import factory
from kdexp.models import resnets

# conf/model/ option → (parameters with 100 classes, the benchmark's count in millions,
# the reference's feature shapes f1.. at 32x32, which kdexp's stages give).
NETS = {
    "wrn40_2": (2_255_156, 2.26, [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    "wrn16_2": (703_284, 0.70, [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    "wrn40_1": (569_780, 0.57, [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    "vgg13": (9_462_180, 9.46, [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]),
    "vgg8": (3_965_028, 3.97, [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]),
    "resnet50": (23_705_252, 23.71, [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)]),
    "mobilenetv2": (812_836, 0.81, [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)]),
    "shufflenet_v1": (949_258, 0.95, [(240, 16, 16), (480, 8, 8), (960, 4, 4)]),
    "shufflenet_v2": (1_355_528, 1.36, [(116, 16, 16), (232, 8, 8), (464, 4, 4)]),
}


def model_cfg(option: str):
    return compose_cfg([f"model@student={option}"], fast=False).student


def randomised(net: nn.Module) -> nn.Module:
    """Batch norms away from their identity init, so that a misplaced one changes the outputs."""
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t, lo, hi in ((m.weight.data, 0.5, 1.5), (m.bias.data, -0.1, 0.1),
                              (m.running_mean, -0.1, 0.1), (m.running_var, 0.5, 1.5)):
                t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)
    return net.eval()


@pytest.mark.parametrize("option", list(NETS))
def test_a_benchmark_checkpoint_loads_and_gives_the_reference_outputs(option):
    exact, millions, shapes = NETS[option]
    cfg = model_cfg(option)
    net = factory.build(cfg, (3, 32, 32), 100, seed=0).eval()
    torch.manual_seed(0)
    reference = randomised(REFERENCE[option]())
    assert factory.count_params(net) == factory.count_params(reference) == exact
    assert round(exact / 1e6, 2) == millions
    state = factory.from_benchmark_layout(reference.state_dict(), net, cfg)
    net.load_state_dict(state)  # strict: every key renamed, none left over
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=1e-4, atol=1e-5)
        assert [tuple(f.shape[1:]) for f in net.features(x)] == shapes
    assert factory.from_benchmark_layout(net.state_dict(), net, cfg) is None  # kdexp's own layout: left alone


@pytest.mark.parametrize("option", list(NETS))
def test_every_block_ends_in_its_own_relu_module(option):
    """The convention OFD relies on: `<block>.relu:input` is a block's pre-ReLU output."""
    net = factory.build(model_cfg(option), (3, 32, 32), 100, seed=0)
    for stage in net.stages:
        for block in stage.modules():
            if block is stage or isinstance(block, nn.Sequential) or not list(block.children()):
                continue
            if type(block).__name__ == "InvertedResidual":  # a linear bottleneck: no activation at its end
                assert not any(isinstance(m, nn.ReLU) for m in block.children())
                continue
            if type(block).__name__ == "PreActBlock":  # WRN: ends in a conv; no `relu` to mislead OFD
                assert not hasattr(block, "relu") and {"relu1", "relu2"} <= dict(block.named_children()).keys()
                continue
            assert isinstance(getattr(block, "relu", None), nn.ReLU) and not block.relu.inplace, type(block).__name__
            others = [m for name, m in block.named_children() if isinstance(m, nn.ReLU) and name != "relu"]
            assert all(m is not block.relu for m in others)


@pytest.mark.parametrize("option", ["shufflenet_v1", "shufflenet_v2"])
def test_a_blocks_relu_input_is_the_references_preact(option):
    """What OFD takes from a student: the reference's `preact` of a stage's last block."""
    import torch.nn.functional as F

    cfg = model_cfg(option)
    net = factory.build(cfg, (3, 32, 32), 100, seed=0).eval()
    torch.manual_seed(0)
    reference = randomised(REFERENCE[option]())
    net.load_state_dict(factory.from_benchmark_layout(reference.state_dict(), net, cfg))
    seen = {}
    net.stages[0][-1].relu.register_forward_hook(lambda m, i, o: seen.update(pre=i[0].clone()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        net(x)
        _, preact = reference.layer1(F.relu(reference.bn1(reference.conv1(x))))
    torch.testing.assert_close(seen["pre"], preact, rtol=1e-4, atol=1e-5)


def test_the_resnet_basic_block_keeps_its_state_dict_and_ends_in_relu():
    block = resnets.BasicBlock(16, 32, stride=2)
    assert isinstance(block.relu, nn.ReLU) and not block.relu.inplace
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    assert sorted(block.state_dict()) == sorted(
        ["conv1.weight", "conv2.weight", "shortcut.0.weight"] + [f"{m}.{p}" for m in ("bn1", "bn2", "shortcut.1") for p in bn])
    x = torch.randn(2, 16, 8, 8)
    seen = {}
    block.relu.register_forward_hook(lambda m, i, o: seen.update(pre=i[0]))
    out = block(x)
    torch.testing.assert_close(out, seen["pre"].clamp(min=0))
    assert (seen["pre"] < 0).any()  # captured before the ReLU, not overwritten in place


@pytest.mark.parametrize("option,name", [("wrn40_2", "wrn40_2"), ("vgg8", "vgg8"), ("resnet50", "resnet50"),
                                         ("mobilenetv2", "mobilenetv2"), ("shufflenet_v2", "shufflenet_v2")])
def test_short_names(option, name):
    assert factory.describe(model_cfg(option)) == name


@pytest.mark.parametrize("override,key", [
    ("student.depth=41", "student.depth"), ("student.widen=0", "student.widen"),
])
def test_bad_wrn_settings_are_refused_in_one_line(override, key):
    with pytest.raises(ConfigError, match=f"^{key}=") as err:
        compose_cfg(["model@student=wrn40_2", override], fast=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("option,override,key,allowed", [
    ("vgg8", "student.depth=10", "student.depth", "8, 11, 13, 16, 19"),
    ("shufflenet_v2", "student.size=0.7", "student.size", "0.5, 1.0, 1.5, 2.0"),
    ("resnet50", "student.blocks=[3,4,6]", "student.blocks", "4 block counts"),
    ("mobilenetv2", "student.width=0", "student.width", "> 0"),
])
def test_bad_benchmark_net_settings_name_the_key_and_the_allowed_values(option, override, key, allowed):
    with pytest.raises(ConfigError, match=f"^{key}=.*{allowed}"):
        compose_cfg([f"model@student={option}", override], fast=False)


@pytest.mark.parametrize("option,schema", [
    ("wrn40_2", "WRNConfig"), ("vgg13", "VGGConfig"), ("resnet50", "ResNetBottleneckConfig"),
    ("mobilenetv2", "MobileNetV2Config"), ("shufflenet_v1", "ShuffleNetV1Config"), ("shufflenet_v2", "ShuffleNetV2Config"),
])
def test_the_yaml_named_like_a_schema_repeats_its_defaults(option, schema):
    """As tests/test_defaults.py for the other models: one source of defaults."""
    from omegaconf import OmegaConf

    from kdexp.config import models as schemas
    from kdexp.config.paths import CONFIG_DIR

    yaml = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / f"{option}.yaml"))
    assert yaml == OmegaConf.to_container(OmegaConf.structured(getattr(schemas, schema)))


@pytest.mark.parametrize("option", ["wrn40_1", "vgg8", "mobilenetv2", "shufflenet_v1", "shufflenet_v2"])
def test_grey_28x28_images_and_multi_exit_nets(option):
    """The stems take the data set's channels and the pooling adapts (MNIST-like sets), and every
    new net is a StagedNet a self-distillation family can cut into exits."""
    net = factory.build(model_cfg(option), (1, 28, 28), 10, seed=0)
    multi = factory.multi_exit(net, (1, 28, 28), 10, seed=1)
    logits, _ = multi.outputs(torch.randn(2, 1, 28, 28))
    assert len(logits) == len(net.stages) == multi.num_exits
    assert all(t.shape == (2, 10) for t in logits)


@pytest.mark.parametrize("option", ["wrn16_2", "vgg8", "shufflenet_v1"])
def test_a_benchmark_checkpoint_is_accepted_as_a_teacher_checkpoint(option):
    """`teacher.checkpoint=` a published teacher (the benchmark's layout) of a new architecture:
    `teacher_import.fitted` renames it instead of refusing it as not fitting."""
    from kdexp.run.teacher_import import fitted

    cfg = model_cfg(option)
    net = factory.build(cfg, (3, 32, 32), 100, seed=0).eval()
    torch.manual_seed(0)
    reference = randomised(REFERENCE[option]())
    state = fitted(reference.state_dict(), net, cfg, "teacher.checkpoint", "ckpt_epoch_240.pth")
    net.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=1e-4, atol=1e-5)
