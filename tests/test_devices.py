"""Devices and precision: `trainer.device=auto|cpu|cuda|mps`, `trainer.precision=32|bf16`.

bf16 autocast works on the CPU too, so its numerics are checked here on every machine; the CUDA
tests run only where a GPU is present (skipped, never faked, elsewhere)."""

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, run_experiment
from kdexp.data import memory as data
from kdexp.config.checks import ConfigError
from kdexp.run.console import PhaseProgress
from kdexp.run.experiment import Context, available_devices, resolve_device
from kdexp.config.identity import key_for
from kdexp.run.loop import Loop, Phase, evaluate

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
QUIET = ["data.limit_train=300", "tracking.log_model=false"]


# --- choosing the device ------------------------------------------------------------


@pytest.mark.parametrize("cuda_here, mps_here, here, auto", [
    (True, True, ["cpu", "cuda", "mps"], "cuda"),
    (True, False, ["cpu", "cuda"], "cuda"),
    (False, True, ["cpu", "mps"], "mps"),
    (False, False, ["cpu"], "cpu"),
], ids=["cuda+mps", "cuda", "mps", "cpu only"])
def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch, cuda_here, mps_here, here, auto):
    """Every machine, whatever this one has: torch's answers are faked, the choice is kdexp's."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_here)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps_here)
    assert available_devices() == here
    assert resolve_device("auto") == torch.device(auto)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_a_device_this_machine_lacks_is_one_line_naming_what_is_here(name):
    if name in available_devices():
        pytest.skip(f"{name} is available here")
    with pytest.raises(ConfigError) as err:
        resolve_device(name)
    message = str(err.value)
    assert message.startswith(f"trainer.device={name} is not available")
    assert "available here: auto, cpu" in message and "\n" not in message


@pytest.mark.parametrize("override,key", [("trainer.device=tpu", "trainer.device"),
                                          ("trainer.precision=16", "trainer.precision"),
                                          ("trainer.precision=fp8", "trainer.precision")])
def test_unknown_device_or_precision_is_refused(override, key):
    with pytest.raises(ConfigError) as err:
        compose_cfg([override])
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_precision_defaults_to_32_and_accepts_bf16():
    assert compose_cfg().trainer.precision == "32"
    assert compose_cfg(["trainer.precision=32"]).trainer.precision == "32"
    assert compose_cfg(["trainer.precision=bf16"]).trainer.precision == "bf16"


# --- bf16 numerics (CPU autocast) ---------------------------------------------------------


def _toy(device="cpu", n=256):
    """Two Gaussian blobs as 1x4x4 images: learnable in a few epochs."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 4, 4, generator=g) + (2 * y - 1).view(n, 1, 1, 1).float()
    split = data.Split(x, y)
    return data.Dataset("toy", split, split, None, 2).to(torch.device(device))


def _data_cfg():
    return OmegaConf.create({"batch_size": 32, "eval_batch_size": 128, "name": "toy",
                             "augmentation": "shift", "max_shift": 1, "crop_padding": 4})


def _fit(precision, device="cpu", epochs=3):
    dataset = _toy(device)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 2)).to(device)
    seen = set()

    def loss(x, y, idx):
        logits = net(x)
        seen.add(logits.dtype)
        return {"loss": torch.nn.functional.cross_entropy(logits, y)}

    optim = OmegaConf.create({"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0,
                              "scheduler": "none"})
    loop = Loop(data.MemorySource(dataset, _data_cfg(), torch.device(device)), optim, PhaseProgress(False), lambda *a: None, precision=precision)
    history = loop.fit(Phase("toy", {"toy": net}, loss, lambda x: {"toy": net(x)}, epochs=epochs, seed=0))
    return net, history, seen


def test_bf16_autocasts_forward_and_loss_and_keeps_float32_weights():
    net32, h32, seen32 = _fit("32")
    net16, h16, seen16 = _fit("bf16")
    assert seen32 == {torch.float32} and seen16 == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in net16.parameters())
    assert all(p.grad.dtype == torch.float32 for p in net16.parameters())
    # Same data, init and batch order: the curves agree to bf16 rounding, and both learn.
    assert h16.metrics["toy/loss"] == pytest.approx(h32.metrics["toy/loss"], rel=0.1, abs=0.02)
    assert h16.last("toy/test_acc") > 90 and abs(h16.last("toy/test_acc") - h32.last("toy/test_acc")) <= 3
    assert all(isinstance(v, float) for v in h16.metrics["toy/loss"])


def test_evaluate_runs_under_the_precision_it_is_given():
    dataset = _toy()
    net = torch.nn.Linear(16, 2)
    dtypes = []

    def predict(x):
        out = net(x.flatten(1))
        dtypes.append(out.dtype)
        return {"net": out}

    source = data.MemorySource(dataset, OmegaConf.create({"eval_batch_size": 100}), torch.device("cpu"))
    a = evaluate(predict, {"net": net}, source, "test", "bf16")
    b = evaluate(predict, {"net": net}, source, "test")
    assert dtypes == [torch.bfloat16] * 3 + [torch.float32] * 3
    assert abs(a["net"] - b["net"]) <= 2


class _NoRun:
    def metrics(self, *args, **kwargs):
        pass


def test_cached_teacher_logits_are_float32_on_the_data_device_under_bf16():
    cfg = compose_cfg(["trainer.precision=bf16"])
    dataset = _toy()
    ctx = Context(cfg, data.MemorySource(dataset, cfg.data, torch.device("cpu")), _NoRun(), torch.device("cpu"))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    logits = ctx.frozen_logits(teacher)
    idx = torch.tensor([0, 5, 7])
    cached = logits(dataset.train.x[idx], idx)
    assert cached.dtype == torch.float32 and cached.device == dataset.train.x.device
    exact = teacher(dataset.train.x[idx]).detach()
    assert torch.allclose(cached, exact, rtol=0.02, atol=0.02)


def test_store_key_holds_bf16_and_leaves_float32_keys_unchanged():
    cfg = compose_cfg()
    args = (cfg.teacher, cfg.data, cfg.optim, 1, True, 7)
    assert key_for(*args, precision="32") == key_for(*args)
    assert key_for(*args, precision="bf16")[0] != key_for(*args)[0]


@pytest.mark.slow
def test_a_bf16_run_end_to_end_on_cpu_trains_its_own_teacher(store):
    _, fp32 = run_experiment(QUIET)
    _, bf16 = run_experiment([*QUIET, "trainer.precision=bf16"])
    assert bf16.info.status == "FINISHED" and bf16.data.params["trainer.precision"] == "bf16"
    assert bf16.data.tags["kdexp.device"] == "cpu, bf16 autocast"
    assert fp32.data.tags["kdexp.device"] == "cpu, float32"
    assert bf16.data.tags["kdexp.teacher.source"] == "trained"  # not the float32 teacher
    assert bf16.data.tags["kdexp.teacher.lineage"] != fp32.data.tags["kdexp.teacher.lineage"]
    for key in ("teacher_acc", "student_acc", "baseline_acc"):
        assert abs(bf16.data.metrics[key] - fp32.data.metrics[key]) < 15, key
        assert bf16.data.metrics[key] > 25, key  # chance is 10 %


# --- CUDA: only where a GPU is present -------------------------------------------------


@cuda
def test_cuda_augmentation_draws_what_the_cpu_draws():
    x = torch.randn(16, 3, 32, 32)
    cpu = data.random_crop_flip(x, 4, torch.Generator().manual_seed(3), (0.5, -0.1, 0.2))
    gpu = data.random_crop_flip(x.cuda(), 4, torch.Generator().manual_seed(3), (0.5, -0.1, 0.2))
    assert gpu.device.type == "cuda" and torch.equal(cpu, gpu.cpu())
    shifted = data.random_shift(x.cuda(), 2, torch.Generator().manual_seed(4))
    assert torch.equal(shifted.cpu(), data.random_shift(x, 2, torch.Generator().manual_seed(4)))


@cuda
@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_cuda_loop_learns_in_each_precision(precision):
    net, history, seen = _fit(precision, "cuda")
    assert next(net.parameters()).device.type == "cuda"
    assert seen == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert history.last("toy/test_acc") > 90


@cuda
@pytest.mark.slow
def test_cuda_bf16_run_end_to_end_with_store_and_logged_model(store):
    """Augmented teacher, cached teacher logits, store hit loaded into a CUDA model, and the
    student logged as an MLflow model that loads on the CPU."""
    common = ["data.limit_train=300", "trainer.device=cuda", "trainer.precision=bf16"]
    _, first = run_experiment([*common, "loss.temperature=2"])
    _, second = run_experiment([*common, "loss.temperature=8"])
    for run in (first, second):
        assert run.info.status == "FINISHED" and run.data.metrics["student_acc"] > 25
        assert run.data.tags["kdexp.device"].startswith("cuda:0 (") and run.data.tags["kdexp.device"].endswith("bf16 autocast")
    assert first.data.tags["kdexp.teacher.source"] == "trained"
    assert second.data.tags["kdexp.teacher.source"] == "store"
    assert first.data.metrics["teacher_acc"] == second.data.metrics["teacher_acc"]
    model = mlflow.pytorch.load_model(f"runs:/{second.info.run_id}/student", map_location="cpu")
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@cuda
@pytest.mark.parametrize("family", [
    ["loss=multi_teacher", "loss.teachers=[mlp,cnn]"],
    ["loss=online"],
    ["loss=self"],
    ["loss=self", "loss.mode=born_again", "loss.generations=1"],
    ["data.augment=true"],  # per-batch teacher logits on augmented inputs
])
@pytest.mark.slow
def test_cuda_every_family_runs(store, family):
    _, run = run_experiment([*QUIET, "trainer.device=cuda", "trainer.precision=bf16", *family])
    assert run.info.status == "FINISHED"
