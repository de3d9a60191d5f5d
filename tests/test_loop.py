"""The shared training loop: same numbers as a plain PyTorch loop, and exact per-epoch means."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import run_experiment
from helpers import toy_dataset, toy_loop
from kdexp.run.loop import History, NonFiniteLoss, Phase

N, BATCH, EPOCHS, SEED = 44, 8, 3, 7  # 44 = 5 full batches + one of 4: the last batch is short


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 16), torch.nn.ReLU(),
                               torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))


def _plain_pytorch(dataset) -> tuple[torch.nn.Module, list[float]]:
    """What the loop promises to compute, written the textbook way."""
    net = _net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(SEED)
    x, y = dataset.train.x, dataset.train.y
    means = []
    for epoch in range(1, EPOCHS + 1):
        torch.manual_seed(SEED * 10_007 + epoch)
        order, total = torch.randperm(N, generator=generator), 0.0
        for start in range(0, N, BATCH):
            idx = order[start:start + BATCH]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        means.append(total / N)
    return net, means


def test_loop_trains_exactly_like_a_plain_pytorch_loop():
    dataset = toy_dataset(N)
    expected_net, expected_means = _plain_pytorch(dataset)
    net = _net()
    phase = Phase("toy", {"toy": net}, lambda x, y, idx: {"loss": F.cross_entropy(net(x), y)},
                  lambda x: {"toy": net(x)}, epochs=EPOCHS, seed=SEED)
    history = toy_loop(dataset, BATCH).fit(phase)
    for got, want in zip(net.parameters(), expected_net.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert history.metrics["toy/loss"] == pytest.approx(expected_means, rel=1e-6)


def test_epoch_metrics_are_sample_weighted_means_of_every_term():
    """The last batch is shorter; a per-batch mean would over-weight it."""
    dataset, logged = toy_dataset(N), []
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 3))

    def loss(x, y, idx):
        return {"loss": F.cross_entropy(net(x), y), "label": y.float().mean(), "index": idx.float().mean()}

    history = toy_loop(dataset, BATCH, logged=logged).fit(Phase("toy", {"toy": net}, loss, lambda x: {"toy": net(x)},
                                               epochs=2, seed=SEED))
    label_mean = dataset.train.y.float().mean().item()
    assert history.metrics["toy/label"] == pytest.approx([label_mean] * 2)
    assert history.metrics["toy/index"] == pytest.approx([(N - 1) / 2] * 2)
    assert [m["toy/label"] for m in logged] == pytest.approx([label_mean] * 2)


def test_a_non_finite_loss_stops_at_its_step():
    dataset = toy_dataset(N)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 3))
    calls = []

    def loss(x, y, idx):
        calls.append(1)
        value = F.cross_entropy(net(x), y)
        return {"loss": value * float("nan") if len(calls) == 3 else value}

    with pytest.raises(NonFiniteLoss, match=r"phase 'toy' at epoch 1, step 3"):
        toy_loop(dataset, BATCH).fit(Phase("toy", {"toy": net}, loss, lambda x: {"toy": net(x)}, epochs=2, seed=SEED))
    assert len(calls) == 3


@pytest.mark.slow
def test_compile_trains_compiled_models_that_match_eager_ones(store):
    """`trainer.compile=true`: the models run through torch.compile (graphs are made), the run ends
    with the same accuracy as eager up to rounding, and the compiled student exports to MLflow."""
    import mlflow
    import torch._dynamo

    small = ["model@teacher=mlp", "model@student=mlp", "data.augment=false", "trainer.teacher_augment=false",
             "trainer.baseline=false"]
    _, eager = run_experiment([*small, "tracking.log_model=false"])
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    _, compiled = run_experiment([*small, "trainer.compile=true", "store.reuse=false"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # at least teacher and student
    assert compiled.data.tags["kdexp.device"] == "cpu, float32, compiled"
    assert compiled.data.params["trainer.compile"] == "True"
    assert abs(compiled.data.metrics["student_acc"] - eager.data.metrics["student_acc"]) <= 1.0
    assert abs(compiled.data.metrics["teacher_acc"] - eager.data.metrics["teacher_acc"]) <= 1.0
    loaded = mlflow.pytorch.load_model(f"runs:/{compiled.info.run_id}/student")
    assert loaded(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_epoch_selected_gives_best_and_validation_selected_test_accuracy():
    history = History({"student/test_acc": [90.0, 93.0, 92.0], "student/val_acc": [91.0, 90.0, 95.0],
                       "baseline/test_acc": [89.0, 88.0], "student/loss": [1.0, 0.5, 0.4]})
    assert history.epoch_selected() == {
        "student_best_acc": 93.0,            # epoch 2, picked on the test set (optimistic)
        "student_val_selected_acc": 92.0,    # epoch 3, picked on validation
        "baseline_best_acc": 89.0,           # no validation split: no validation-selected figure
    }
