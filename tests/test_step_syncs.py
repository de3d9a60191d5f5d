"""The training step makes the host wait for the device only in the sparse finiteness check (issue 26).

On a GPU every `.item()`, `float(tensor)`, `if tensor:`, boolean-mask index or `nonzero` in the step
stalls the queue of kernels; on this CPU they cost nothing and cannot be observed, so
`benchmarks/bench_step.py`'s `SyncCounter` counts them where CUDA would wait, by call site, over the
steps of an epoch after its first (whose loss is read once, as the phase's reference).
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_cfg
from helpers import REPOSITORY
from kdexp.data.memory import Dataset, MemorySource, Split
from kdexp.run.loop import Loop, Phase

N, BATCH = 48, 8  # 6 steps an epoch, 5 of them counted


def _bench():
    spec = importlib.util.spec_from_file_location("bench_step", REPOSITORY / "benchmarks" / "bench_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_step"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _bench()


def _dataset() -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, 8, 8, generator=g)
    y = torch.arange(N) % 4
    return Dataset("toy", Split(x, y), Split(x[:16], y[:16]), None, 4)


def _syncs_per_step(overrides: list[str]) -> dict[str, float]:
    cfg = compose_cfg(["model@student=cnn", "student.channels=[4,8]", "student.fc=16", "student.dropout=0",
                       "model@teacher=cnn", "teacher.channels=[4,8]", "teacher.fc=16",
                       f"data.batch_size={BATCH}", *overrides])
    setup = bench.Setup(torch.device("cpu"))
    source = MemorySource(_dataset(), cfg.data, setup.device)
    teacher = bench.frozen(bench.build(cfg.teacher, source, 1, setup))
    student = bench.build(cfg.student, source, 0, setup)
    counter = bench.SyncCounter()
    times = bench.kdexp_epochs(cfg, source, student, teacher, bench.per_batch_logits(teacher), setup, counter=counter)
    steps = times.steps + times.counted
    assert steps == N // BATCH - 1
    return {site: n / steps for site, n in counter.sites.items()}


@pytest.mark.parametrize("method", [["kd=hinton"], ["kd=dkd"], ["hint=at"], ["hint=crd", "hint.negatives=8"]],
                         ids=lambda m: m[0])
def test_a_step_waits_for_the_device_only_in_the_finiteness_check(method):
    syncs = _syncs_per_step(method)
    others = {site: n for site, n in syncs.items() if "_check_finite" not in site}
    assert others == {}
    # On the CPU the check reads every step's loss (free there); on an accelerator every
    # loop._GPU_CHECK_EVERY steps.
    assert syncs.get("kdexp/run/loop.py:_check_finite", 0) == 1


def test_the_counter_sees_a_per_step_item_and_a_boolean_mask():
    """What the test above would catch: a loss that reads a value or indexes with a mask each step."""
    dataset = _dataset()
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    cfg = compose_cfg([f"data.batch_size={BATCH}"])

    def loss(x, y, idx):
        logits = net(x)
        _ = float(logits.detach().mean())
        kept = logits[y >= 0]
        return {"loss": F.cross_entropy(kept, y)}

    counter, progress = bench.SyncCounter(), None
    progress = bench.TimedProgress(torch.device("cpu"), N // BATCH, counter)
    counter.active = False
    with counter:
        Loop(MemorySource(dataset, cfg.data, torch.device("cpu")), cfg.optim, progress, lambda *_: None).fit(
            Phase("toy", {"toy": net}, loss, lambda x: {"toy": net(x)}, epochs=1, seed=0))
    steps = N // BATCH - 1
    assert counter.sites["test_step_syncs.py:loss"] == 2 * steps
