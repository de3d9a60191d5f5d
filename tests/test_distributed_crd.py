"""hint=crd under DDP (kdexp/distill/methods/crd.py, docs/distributed.md): on 2 gloo processes every
process ends with the same memory banks and normalisers as one process on the same global batches,
each process's loss is its rows' share of the one-process loss (the negatives drawn once for the
global batch, from every process's labels: each reads only its shard's); and
`torchrun --nproc_per_node=2 -m kdexp hint=crd` logs the curves of one process."""

from __future__ import annotations

import pytest

from helpers import kdexp, runs_of, spawn_ranks

pytestmark = pytest.mark.slow

N, D_S, D_T, K = 40, 6, 5, 8
STEPS = [(1, 1, 7), (1, 2, 7), (2, 1, 5)]  # (epoch, step, global rows): 7 splits 4 + 3, 5 splits 3 + 2


def _crd_steps(rank: int, world: int, port: int, out: str) -> None:
    """CRD's forward on `world` processes' shares of three global batches (forward and bank update
    only); rank 0 saves its banks, its per-step hint and its rows, the others their hint and rows."""
    import torch
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from kdexp.data.source import Shard
    from kdexp.distill.methods import Outputs
    from kdexp.distill.methods.base import TrainingSet
    from kdexp.distill.methods.crd import CRD, CRDConfig
    from kdexp.distill.phase import Clock

    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    labels = torch.arange(N) % 4
    part = Shard(rank, world)
    # What the composed loss reads under DDP (distill/compose.py training_set: the train split's
    # eval batches, sharded): this process's samples' labels, -1 for the others'.
    seen = torch.full((N,), -1)
    seen[part.take(torch.arange(N))] = labels[part.take(torch.arange(N))]
    m = CRD(OmegaConf.structured(CRDConfig(student="s", teacher="t", negatives=K)), None)
    m.train_set = TrainingSet(N, lambda: seen)
    torch.manual_seed(0)  # as the composed loss seeds each method: the same heads and banks on every process
    m.setup(Outputs(torch.zeros(2, 3), {"s": torch.zeros(2, D_S)}),
            Outputs(torch.zeros(2, 3), {"t": torch.zeros(2, D_T)}))
    hints, rows = [], []
    for epoch, step, size in STEPS:
        g = torch.Generator().manual_seed(100 * epoch + step)  # the global batch, the same on every process
        idx = torch.randperm(N, generator=g)[:size]
        f_s, f_t = torch.randn(size, D_S, generator=g), torch.randn(size, D_T, generator=g)
        mine = part.take(torch.arange(size))
        terms = m((None, labels[idx][mine], idx[mine]), Clock(epoch, step),
                  Outputs(None, {"s": f_s[mine]}), Outputs(None, {"t": f_t[mine]}))
        hints.append(float(terms["hint"].detach()))
        rows.append(len(mine))
    torch.save({"memory_s": m.memory_s, "memory_t": m.memory_t, "normalisers": m.normalisers,
                "hints": hints, "rows": rows}, f"{out}.{rank}")
    if world > 1:
        dist.destroy_process_group()


def test_two_processes_hold_one_process_banks_and_share_its_loss(tmp_path):
    import torch

    _crd_steps(0, 1, 0, str(tmp_path / "one"))
    spawn_ranks(_crd_steps, 2, str(tmp_path / "two"))
    one = torch.load(tmp_path / "one.0")
    ranks = [torch.load(tmp_path / f"two.{rank}") for rank in range(2)]
    for rank in ranks:  # every process holds the one-process banks and normalisers
        for key in ("memory_s", "memory_t", "normalisers"):
            torch.testing.assert_close(rank[key], one[key], rtol=1e-5, atol=1e-6)
    assert [r["rows"] for r in ranks] == [[4, 4, 3], [3, 3, 2]]
    for i, (_, _, size) in enumerate(STEPS):  # the rows' means, weighted by rows, are the global mean
        shared = sum(r["hints"][i] * r["rows"][i] for r in ranks) / size
        assert shared == pytest.approx(one["hints"][i], rel=1e-5)
    assert ranks[0]["hints"][0] != ranks[1]["hints"][0]  # each process scored its own rows


# No batch norm and no dropout: then two processes compute what one does, up to summation order.
ARGS = ["hint=crd", "hint.negatives=64", "loss.alpha=1", "trainer.epochs=2", "trainer.teacher_epochs=1",
        "data.limit_train=250", "data.batch_size=64", "trainer.progress=false", "trainer.baseline=false",
        "teacher.batch_norm=false", "teacher.dropout=0", "tracking.log_model=false"]


def _curves(run) -> dict[str, list[float]]:
    import mlflow

    client = mlflow.MlflowClient()
    keys = [k for k in run.data.metrics if k.startswith("student/")]
    return {k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
            for k in keys}


def test_torchrun_two_processes_log_the_curves_of_one_process(tmp_path):
    # 250 samples in global batches of 64: the last (58 rows) splits 29 + 29; CRD's bank covers all 250.
    kdexp(["--standalone", "--nproc_per_node=2", "-m", "kdexp", *ARGS], tmp_path, module="torch.distributed.run",
          check=True)
    [ddp] = runs_of(tmp_path)
    assert ddp.info.status == "FINISHED" and ddp.data.tags["kdexp.processes"] == "2"
    kdexp([*ARGS, "trainer.rerun=force"], tmp_path, check=True)
    [one] = [r for r in runs_of(tmp_path) if r.info.run_id != ddp.info.run_id]
    assert one.data.tags["kdexp.teacher.source"] == "store"  # the same teacher
    two, single = _curves(ddp), _curves(one)
    for key in ("student/loss", "student/hint", "student/ce"):
        assert two[key] == pytest.approx(single[key], rel=1e-4), key
