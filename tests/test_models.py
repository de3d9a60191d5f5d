"""CIFAR ResNets and torchvision models as StagedNets, learning-rate schedules, the CIFAR-100
benchmark preset, and one end-to-end run of a resnet8 teacher on Fashion-MNIST files."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, run_experiment
from kdexp.data import memory as data
from kdexp.models import factory as models
from kdexp.models import resnets
from kdexp.models import tv_models
from kdexp.config.checks import ConfigError
from kdexp.run.loop import Loop, Phase, make_optimizer, make_scheduler

SHAPES = [(1, 28, 28), (3, 32, 32)]
RESNETS = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4"]


def model_cfg(option: str, *overrides: str):
    """The validated config of `conf/model/<option>.yaml`, composed as the student."""
    return compose_cfg([f"model@student={option}", *[f"student.{o}" for o in overrides]], fast=False).student


# --- CIFAR ResNets ------------------------------------------------------------------


@pytest.mark.parametrize("option", RESNETS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cifar_resnets_build_for_both_image_shapes(option, shape):
    cfg = model_cfg(option)
    net = models.build(cfg, shape, 10, seed=0)
    assert isinstance(net, models.StagedNet) and len(net.stages) == 3
    x = torch.randn(2, *shape)
    assert net(x).shape == (2, 10)
    feats = net.features(x)
    widths = list(cfg.widths)
    side = shape[1]
    assert [tuple(f.shape[1:]) for f in feats] == [
        (widths[1], side, side), (widths[2], (side + 1) // 2, (side + 1) // 2),
        (widths[3], (side + 3) // 4, (side + 3) // 4)]
    n = (cfg.depth - 2) // 6
    assert [len(s) for s in net.stages] == [n, n, n]


@pytest.mark.parametrize("option,classes,millions", [
    ("resnet8x4", 100, 1.23), ("resnet32x4", 100, 7.43), ("resnet20", 10, 0.27),
    ("resnet56", 100, 0.86), ("resnet110", 100, 1.74),
])
def test_resnet_parameter_counts_match_the_published_ones(option, classes, millions):
    net = models.build(model_cfg(option), (3, 32, 32), classes, seed=0)
    assert round(models.count_params(net) / 1e6, 2) == millions


def test_resnet_exact_counts_and_short_names():
    counts = {o: models.count_params(models.build(model_cfg(o), (3, 32, 32), 100, seed=0))
              for o in ("resnet8x4", "resnet32x4")}
    assert counts == {"resnet8x4": 1_233_540, "resnet32x4": 7_433_860}
    assert models.count_params(models.build(model_cfg("resnet20"), (3, 32, 32), 10, seed=0)) == 272_474
    assert models.describe(model_cfg("resnet32x4")) == "resnet32x4"
    assert models.describe(model_cfg("resnet20")) == "resnet20"
    assert models.describe(model_cfg("resnet8", "depth=44")) == "resnet44"
    assert models.describe(model_cfg("resnet8", "widths=[8,8,16,32]")) == "resnet8[8,8,16,32]"


def test_equal_seeds_give_equal_resnets():
    a = models.build(model_cfg("resnet8"), (3, 32, 32), 10, seed=1)
    b = models.build(model_cfg("resnet8"), (3, 32, 32), 10, seed=1)
    c = models.build(model_cfg("resnet8"), (3, 32, 32), 10, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("override,key", [
    ("student.depth=10", "student.depth"),
    ("student.widths=[16,32,64]", "student.widths"),
    ("student.arch=resnet19", "student.arch"),
])
def test_bad_model_settings_are_refused_in_one_line(override, key):
    option = "torchvision" if "arch" in override else "resnet8"
    with pytest.raises(ConfigError) as err:
        compose_cfg([f"model@student={option}", override])
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


# --- torchvision models -------------------------------------------------------------

TV_ARCHS = ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1"]


@pytest.mark.parametrize("arch", TV_ARCHS)
@pytest.mark.parametrize("shape", SHAPES)
def test_torchvision_models_build_for_both_image_shapes(arch, shape):
    cfg = model_cfg("torchvision", f"arch={arch}")
    net = models.build(cfg, shape, 7, seed=0)
    assert isinstance(net, models.StagedNet) and len(net.stages) >= 3
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == shape[0]
    x = torch.randn(2, *shape)
    assert net(x).shape == (2, 7)
    feats = net.features(x)
    assert len(feats) == len(net.stages) and all(f.dim() == 4 for f in feats)
    assert models.describe(cfg) == arch


@pytest.mark.parametrize("arch,shape", [
    ("resnet18", (1, 28, 28)), ("mobilenet_v2", (3, 32, 32)), ("squeezenet1_1", (3, 32, 32)),
    ("shufflenet_v2_x0_5", (3, 32, 32)), ("regnet_x_400mf", (3, 32, 32)), ("googlenet", (3, 32, 32)),
])
def test_torchvision_stages_compute_exactly_the_models_forward(arch, shape):
    """The re-wiring holds the model's own modules and reproduces its forward."""
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = tvm.get_model(arch, weights=None, num_classes=5, **tv_models._arch_kwargs(arch, shape, False))
    tv_models._adapt_channels(model, shape[0], pretrained=False)
    model.eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        expected = model(x)
        net = tv_models._staged(model, x).eval()
        assert torch.allclose(net(x), expected, atol=1e-5)
    assert {id(p) for p in net.parameters()} == {id(p) for p in model.parameters()}


def test_torchvision_model_too_big_for_small_images_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        models.build(model_cfg("torchvision", "arch=alexnet"), (1, 28, 28), 10, seed=0)
    assert "arch=alexnet" in str(err.value) and "(1, 28, 28)" in str(err.value) and "\n" not in str(err.value)


def test_pretrained_adaptation_keeps_the_filters_and_replaces_the_imagenet_layer():
    """What `pretrained: true` does after loading ImageNet weights (not downloaded here): the first
    convolution takes grey images by summing its RGB filters, the 1000-way layer becomes a k-way one."""
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = tvm.get_model("resnet18", weights=None)  # 1000 classes, as the ImageNet weights
    rgb = model.conv1.weight.detach().clone()
    tv_models._adapt_classes(model, 10, 1000)
    tv_models._adapt_channels(model, 1, pretrained=True)
    assert model.fc.out_features == 10 and model.conv1.in_channels == 1
    assert torch.allclose(model.conv1.weight, rgb.sum(dim=1, keepdim=True), atol=1e-6)
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():  # a grey image gives the same first activations as its RGB copy did
        assert torch.allclose(model.conv1(grey), torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), rgb,
                                                                            stride=2, padding=3), atol=1e-5)


@pytest.mark.parametrize("option,extra", [("resnet8", ()), ("torchvision", ("arch=shufflenet_v2_x0_5",))])
def test_new_models_work_as_multi_exit_backbones(option, extra):
    net = models.build(model_cfg(option, *extra), (3, 32, 32), 10, seed=0)
    multi = models.multi_exit(net, (3, 32, 32), 10, seed=1)
    logits, feats = multi.outputs(torch.randn(2, 3, 32, 32))
    assert len(logits) == len(net.stages) == multi.num_exits
    assert all(t.shape == (2, 10) for t in logits)


# --- learning-rate schedules ----------------------------------------------------------


def _optim(**values):
    base = dict(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, scheduler="none",
                milestones=[], gamma=0.1, min_lr=0.0)
    base.update(values)
    return OmegaConf.create(base)


def _lrs(cfg, epochs: int) -> list[float]:
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = make_scheduler(opt, cfg, epochs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def test_multistep_scales_lr_after_each_milestone():
    lrs = _lrs(_optim(scheduler="multistep", milestones=[2, 4], gamma=0.1), 5)
    assert lrs == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005])
    # The benchmark recipe: 0.05 for epochs 1-150, then x0.1 after 150, 180, 210.
    recipe = _lrs(_optim(scheduler="multistep", milestones=[150, 180, 210]), 240)
    assert recipe[149] == pytest.approx(0.05) and recipe[150] == pytest.approx(0.005)
    assert recipe[180] == pytest.approx(0.0005) and recipe[239] == pytest.approx(0.00005)


def test_cosine_goes_from_lr_to_min_lr_and_none_keeps_lr():
    lrs = _lrs(_optim(scheduler="cosine", min_lr=0.001), 4)
    assert lrs[0] == pytest.approx(0.05) and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[2] == pytest.approx(0.001 + (0.05 - 0.001) * 0.5)  # halfway down the cosine
    assert _lrs(_optim(), 3) == pytest.approx([0.05] * 3)


def test_loop_steps_the_schedule_per_epoch_and_logs_lr():
    from kdexp.run.console import PhaseProgress

    g = torch.Generator().manual_seed(0)
    split = data.Split(torch.randn(32, 1, 4, 4, generator=g), torch.arange(32) % 2)
    dataset = data.Dataset("toy", split, split, None, 2)
    data_cfg = OmegaConf.create({"batch_size": 16, "eval_batch_size": 32, "name": "toy",
                                 "augmentation": "shift", "max_shift": 1, "crop_padding": 4})
    logged = []
    loop = Loop(data.MemorySource(dataset, data_cfg, torch.device("cpu")), _optim(scheduler="multistep", milestones=[1, 2], gamma=0.5),
                PhaseProgress(False), lambda phase, epoch, m: logged.append(m))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    phase = Phase("toy", {"toy": net}, lambda x, y, idx: {"loss": torch.nn.functional.cross_entropy(net(x), y)},
                  lambda x: {"toy": net(x)}, epochs=3, seed=0)
    history = loop.fit(phase)
    assert history.metrics["toy/lr"] == pytest.approx([0.05, 0.025, 0.0125])
    assert [m["toy/lr"] for m in logged] == pytest.approx([0.05, 0.025, 0.0125])


@pytest.mark.parametrize("override,key", [
    ("optim.scheduler=step", "optim.scheduler"),
    ("optim.milestones=[5,3]", "optim.milestones"),
    ("optim.gamma=0", "optim.gamma"),
])
def test_bad_schedules_are_refused_in_one_line(override, key):
    with pytest.raises(ConfigError) as err:
        compose_cfg(["optim=sgd_multistep", override])
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_cifar100_benchmark_preset_is_the_standard_recipe():
    cfg = compose_cfg(["experiment=cifar100_resnet32x4_resnet8x4"], fast=False)
    assert cfg.data.name == "cifar100" and cfg.data.augment and cfg.data.augmentation == "crop_flip"
    assert cfg.data.crop_padding == 4 and cfg.data.batch_size == 64
    assert models.describe(cfg.teacher) == "resnet32x4" and models.describe(cfg.student) == "resnet8x4"
    o = cfg.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay) == ("sgd", 0.05, 0.9, 0.0005)
    assert (o.scheduler, list(o.milestones), o.gamma) == ("multistep", [150, 180, 210], 0.1)
    assert (cfg.trainer.epochs, cfg.trainer.teacher_epochs) == (240, 240)
    assert (cfg.loss.name, cfg.loss.temperature, cfg.loss.alpha) == ("standard", 4.0, 0.1)


# --- end to end -----------------------------------------------------------------------


@pytest.mark.slow
def test_resnet8_teacher_on_fashion_mnist_files_distils_into_an_mlp(store, tmp_path):
    from test_data import write_mnist_like

    root = tmp_path / "fmnist"
    write_mnist_like(root, "FashionMNIST", train=96, test=40)
    objective, run = run_experiment([
        "data=fashion_mnist", f"data.root={root}", "model@teacher=resnet8", "model@student=mlp",
        "data.batch_size=32", "tracking.log_model=false", "trainer.threads=1",
        "trainer.fail_at_chance=false",  # random images: no teacher can beat chance on them
    ])
    assert run.info.status == "FINISHED"
    assert run.data.tags["teacher"] == "resnet8" and run.data.tags["dataset"] == "fashion_mnist"
    assert run.data.params["teacher.name"] == "resnet" and run.data.params["data.augmentation"] == "shift"
    assert 0.0 <= objective <= 100.0
    assert run.data.metrics["teacher_params"] == models.count_params(
        resnets.cifar_resnet(8, resnets.NARROW, 1, 10))


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_a_checkpoint_saved_from_torchvisions_own_model_loads_as_a_teacher(arch):
    """torchvision's layout (`conv1.weight`, `layer1.0.…`, `fc.weight`: the published ImageNet
    teachers) is renamed to the re-wired net's and gives torchvision's outputs."""
    import torchvision.models as tvm
    from omegaconf import OmegaConf

    from kdexp.run.teacher_import import fitted

    shape = (3, 32, 32)
    torch.manual_seed(0)
    reference = tvm.get_model(arch, weights=None, num_classes=5).eval()
    cfg = OmegaConf.create({"name": "torchvision", "arch": arch, "pretrained": False})
    net = models.build(cfg, shape, 5, seed=1).eval()
    assert models.from_benchmark_layout(net.state_dict(), net, cfg) is None  # kdexp's own names: left alone
    net.load_state_dict(fitted(reference.state_dict(), net, cfg, "teacher.checkpoint", f"{arch}.pth"))
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x))
