"""The GPU throughput settings a DDP user expects (docs/distributed.md): `trainer.precision=fp16` with
a GradScaler (refused on a CPU in one line; trained on CUDA where there is a GPU),
`trainer.channels_last`, and where each setting stands in a run's identity."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg


def test_fp16_is_refused_on_a_cpu_in_one_line():
    from kdexp.config.checks import ConfigError
    from kdexp.run.devices import resolve_device

    with pytest.raises(ConfigError, match=r"^trainer.precision=fp16 needs a CUDA device .* on cpu use "
                                          r"trainer.precision=bf16 or 32$"):
        resolve_device("cpu", "fp16")
    assert compose_cfg(["trainer.precision=fp16"]).trainer.precision == "fp16"  # a valid value


def test_channels_last_models_and_identity():
    from kdexp.config.identity import run_key
    from kdexp.data.memory import Dataset, MemorySource, Split
    from kdexp.run.context import Context

    cfg = compose_cfg(["trainer.channels_last=true"])
    split = Split(torch.randn(8, 1, 28, 28), torch.arange(8) % 10)
    source = MemorySource(Dataset("toy", split, split, None, 10), cfg.data, torch.device("cpu"))
    teacher = Context(cfg, source, None, torch.device("cpu")).build(cfg.teacher, "teacher")
    conv = next(m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    # a memory layout: same numbers up to rounding, so the same run; sync_bn changes batch norm: another
    assert run_key(cfg, "cpu") == run_key(compose_cfg([]), "cpu")
    assert run_key(compose_cfg(["trainer.sync_bn=true"]), "cuda") != run_key(compose_cfg([]), "cuda")
    assert run_key(compose_cfg(["trainer.dist_timeout=30"]), "cpu") == run_key(compose_cfg([]), "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast with a GradScaler runs on CUDA")
@pytest.mark.slow
def test_fp16_trains_with_a_grad_scaler_on_cuda(tmp_path):
    from omegaconf import OmegaConf

    from kdexp.data.memory import Dataset, MemorySource, Split
    from kdexp.distill.functional import labels_only
    from kdexp.distill.phase import Phase
    from kdexp.run.console import PhaseProgress
    from kdexp.run.loop import Loop

    device = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(256, 1, 4, 4, generator=g).to(device), (torch.arange(256) % 2).to(device))
    source = MemorySource(Dataset("toy", split, split, None, 2), OmegaConf.create(
        {"batch_size": 32, "eval_batch_size": 64, "augment": False}), device)
    optim = OmegaConf.create({"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "fused": True, "scheduler": "none"})
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).to(device)
    saved = []
    loop = Loop(source, optim, PhaseProgress(False), lambda *a: None, precision="fp16")
    phase = Phase("toy", {"toy": model}, lambda x, y, idx: labels_only(model(x), y),
                  lambda x: {"toy": model(x)}, epochs=2, seed=1)
    history = loop.fit(phase, save=saved.append)
    assert all(torch.isfinite(torch.tensor(history.metrics["toy/loss"])))
    assert saved[-1]["scaler"]["scale"] > 0  # the scaler's state is checkpointed for the resume
    assert model[1].weight.dtype == torch.float32
