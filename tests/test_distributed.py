"""kdexp/run/distributed.py without a launcher: the world read from torchrun's and SLURM's
environment, the gradient weight of an uneven last batch, the refusals; and the shared loop on two
gloo processes (spawned here) against one process, uneven last batch included."""

from __future__ import annotations

import pytest

from helpers import spawn_ranks, toy_dataset


def test_world_from_torchrun_and_slurm_environments():
    from kdexp.run.distributed import World, from_env

    assert from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(3, 4, 1)
    assert from_env({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1"}) == World(5, 8, 1)
    # an salloc shell (or a one-task step) is one process, whatever SLURM_NTASKS says
    assert from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) == World()
    assert from_env({}).shard.world == 1 and not from_env({}).active


def test_timeout_is_read_from_the_command_line():
    from kdexp.config.checks import ConfigError
    from kdexp.config.sections import TrainerConfig
    from kdexp.run.distributed import timeout_from

    assert timeout_from(["trainer.epochs=2", "trainer.dist_timeout=45"], 300) == 45.0
    assert timeout_from(["trainer.epochs=2"], TrainerConfig.dist_timeout) == TrainerConfig.dist_timeout
    with pytest.raises(ConfigError, match="trainer.dist_timeout=soon"):
        timeout_from(["trainer.dist_timeout=soon"], 300)


def test_uneven_last_batch_is_weighted_and_a_rank_without_rows_refused(monkeypatch):
    from kdexp.config.checks import ConfigError
    from kdexp.run import distributed

    assert distributed.shard_weight(2, 4, 51, 16) == 1.0  # one process: as is
    monkeypatch.setattr(distributed, "_world", distributed.World(0, 2))
    assert distributed.shard_weight(8, 1, 51, 16) == 1.0
    # the last global batch has 3 rows: rank 0 holds 2, rank 1 holds 1
    assert distributed.shard_weight(2, 4, 51, 16) == pytest.approx(4 / 3)
    assert distributed.shard_weight(1, 4, 51, 16) == pytest.approx(2 / 3)
    distributed.check_batches(51, 16)
    with pytest.raises(ConfigError, match="data.batch_size=10 leaves a last batch of 1"):
        distributed.check_batches(51, 10)


def test_sync_bn_is_refused_on_a_cpu():
    from omegaconf import OmegaConf
    import torch

    from kdexp.config.checks import ConfigError
    from kdexp.run.distributed import check_settings

    check_settings(OmegaConf.create({"trainer": {"sync_bn": False}}), torch.device("cpu"))
    with pytest.raises(ConfigError, match="trainer.sync_bn=true needs CUDA"):
        check_settings(OmegaConf.create({"trainer": {"sync_bn": True}}), torch.device("cpu"))


# --- the loop on two gloo processes -----------------------------------------------------------


def _fit(rank: int, world: int, port: int, out: str) -> None:
    """Train the toy MLP with the shared loop as rank `rank` of `world` (1: no process group)."""
    import os

    import torch
    from torch import nn

    from kdexp.distill.functional import labels_only
    from kdexp.distill.phase import Phase
    from kdexp.run import distributed
    from kdexp.run.console import PhaseProgress
    from kdexp.run.loop import Loop
    from kdexp.data.memory import MemorySource
    from omegaconf import OmegaConf

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        distributed.init(60)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 16), nn.ReLU(), nn.Linear(16, 3))
    data_cfg = OmegaConf.create({"batch_size": 16, "eval_batch_size": 7, "augment": False})
    optim = OmegaConf.create({"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "fused": False,
                              "scheduler": "none"})
    source = MemorySource(toy_dataset(51), data_cfg, torch.device("cpu"), distributed.current().shard)
    loop = Loop(source, optim, PhaseProgress(False), lambda *a: None)
    phase = Phase("toy", {"toy": model}, lambda x, y, idx: labels_only(model(x), y),
                  lambda x: {"toy": model(x)}, epochs=3, seed=1)
    history = loop.fit(phase)
    if rank == 0:
        torch.save({"state": model.state_dict(), "history": history.metrics}, out)
    distributed.close()


@pytest.mark.slow
def test_two_gloo_processes_train_what_one_process_trains(tmp_path):
    """51 samples in global batches of 16: the last batch (3 rows) splits 2 + 1 over the ranks, and
    the step still equals one process's: same weights, same epoch losses and accuracies."""
    import torch

    _fit(0, 1, 0, str(tmp_path / "one.pt"))
    spawn_ranks(_fit, 2, str(tmp_path / "two.pt"))
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for key, value in one["state"].items():
        torch.testing.assert_close(two["state"][key], value, rtol=1e-5, atol=1e-6)
    assert one["history"].keys() == two["history"].keys()
    for key, values in one["history"].items():
        assert two["history"][key] == pytest.approx(values, rel=1e-5, abs=1e-6), key
