"""The loop's support for distillation methods: trainable parts optimised and checkpointed (resume
is exact), the clock terms read, and a diverged phase stopped as a failure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import toy_dataset, toy_loop
from kdexp.run.loop import Clock, Diverged, Phase

N, BATCH = 40, 8


def _sgd_loop(lr: float = 0.01):
    return toy_loop(toy_dataset(N), BATCH, "sgd", lr)


def _phase(epochs: int, seen: list | None = None) -> Phase:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    part = torch.nn.Linear(4, 5)  # a connector: trained only through the loss, never judged
    target = torch.randn(N, 5, generator=torch.Generator().manual_seed(1))
    clock = Clock()

    def loss(x, y, idx):
        if seen is not None:
            seen.append((clock.epoch, clock.step, clock.epochs))
        hidden = net[2](net[1](net[0](x)))
        hint = F.mse_loss(part(hidden), target[idx])
        ce = F.cross_entropy(net[3](hidden), y)
        return {"loss": ce + hint, "ce": ce, "hint": hint}

    return Phase("toy", {"toy": net}, loss, lambda x: {"toy": net(x)}, epochs=epochs, seed=3,
                 parts={"hint": part}, clock=clock)


def _states(phase: Phase) -> dict:
    return {k: v.clone() for m in (*phase.models.values(), *phase.parts.values()) for k, v in m.state_dict().items()}


def test_parts_are_trained_and_the_clock_runs():
    seen = []
    phase = _phase(2, seen)
    before = {k: v.clone() for k, v in phase.parts["hint"].state_dict().items()}
    _sgd_loop().fit(phase)
    assert any(not torch.equal(before[k], v) for k, v in phase.parts["hint"].state_dict().items())
    assert seen[0] == (1, 1, 2) and seen[-1] == (2, N // BATCH, 2)


def test_resume_with_a_trainable_part_is_exact():
    straight = _phase(3)
    history = _sgd_loop().fit(straight)
    saved = {}

    class Stop(Exception):
        pass

    def save_then_crash(state):
        saved.update(torch.load(_roundtrip(state), weights_only=True))
        if state["epoch"] == 2:
            raise Stop

    crashed = _phase(3)
    with pytest.raises(Stop):
        _sgd_loop().fit(crashed, save=save_then_crash)
    resumed = _phase(3)  # fresh models and part, as in a new process
    resumed_history = _sgd_loop().fit(resumed, resume=saved)
    assert resumed_history.metrics == history.metrics
    a, b = _states(straight), _states(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _roundtrip(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_a_loss_that_blows_up_stops_the_phase_as_diverged():
    calls = []

    def loss(x, y, idx):
        calls.append(1)
        value = F.cross_entropy(net(x), y)
        return {"loss": value * (1e5 if len(calls) > 1 else 1.0)}  # finite, 5 orders of magnitude up

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 3))
    with pytest.raises(Diverged, match=r"phase 'toy' diverged at epoch 1: .*likely cause: optim.lr=0.01"):
        _sgd_loop().fit(Phase("toy", {"toy": net}, loss, lambda x: {"toy": net(x)}, epochs=3, seed=0))


def test_an_ordinary_phase_does_not_count_as_diverged():
    _sgd_loop(lr=0.1).fit(_phase(3))
