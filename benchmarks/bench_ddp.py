"""Images per second of kdexp's training loop on 1, 2, ... processes (issue 23): prints figures, not a test.

From the repository root, with the project's virtual environment active:

    python benchmarks/bench_ddp.py                          # 1 and 2 CPU processes (gloo), the CNN on mnist5k
    python benchmarks/bench_ddp.py --processes 1 2 4 8 --device cuda    # GPUs (NCCL), unchanged otherwise
    python benchmarks/bench_ddp.py --model resnet20 --batch-size 256 --epochs 3

For each process count N it starts `torchrun --standalone --nproc_per_node=N` on this file, whose
workers train one phase through kdexp's own path (kdexp/run/distributed.py: the process group,
each rank's shard of every global batch, DistributedDataParallel around the model; kdexp/run/loop.py)
on the embedded mnist5k data, the global batch the same at every N. Rank 0 times the epochs after
the first (warm-up) and reports images/s = training images per epoch / seconds per epoch. Scaling
efficiency = images/s on N / (N x images/s on 1). On a CPU every process gets
`--threads-per-process` threads (1 by default, what torchrun sets), so N processes use N cores: run
it on an idle machine with at least max(N) cores, or the figures say more about the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def worker(args: argparse.Namespace) -> None:
    """One rank: train `args.model` for `args.epochs` epochs through kdexp's loop; rank 0 writes the timing."""
    sys.path.insert(0, str(REPO))
    import torch
    from omegaconf import OmegaConf

    from kdexp.data.sources import open_source
    from kdexp.distill.functional import labels_only
    from kdexp.distill.phase import Phase
    from kdexp.models import factory
    from kdexp.run import distributed
    from kdexp.run.console import PhaseProgress
    from kdexp.run.loop import Loop

    torch.set_num_threads(args.threads_per_process)
    world = distributed.init(600)
    device = distributed.local_device(torch.device(args.device))
    conf = REPO / "conf"
    data_cfg = OmegaConf.merge(OmegaConf.load(conf / "data" / "mnist5k.yaml"),
                               {"batch_size": args.batch_size, "root": "data"})
    model_cfg = OmegaConf.load(conf / "model" / f"{args.model}.yaml")
    optim_cfg = OmegaConf.load(conf / "optim" / "adam.yaml")
    source = open_source(data_cfg, device, world.shard)
    model = factory.build(model_cfg, source.input_shape, source.num_classes, seed=0).to(device)
    stamps: list[float] = []

    def on_epoch(phase, epoch, metrics):
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    loop = Loop(source, optim_cfg, PhaseProgress(False), on_epoch)
    phase = Phase("bench", {"bench": model}, lambda x, y, idx: labels_only(model(x), y),
                  lambda x: {"bench": model(x)}, epochs=args.epochs, seed=1)
    loop.fit(phase)
    if world.is_main:
        # Each epoch's time includes its evaluation on the test split: what a kdexp epoch costs.
        per_epoch = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        Path(args.out).write_text(json.dumps({"processes": world.size, "epoch_s": per_epoch,
                                              "images_per_s": source.size("train") / per_epoch}))
    distributed.close()


def measure(n: int, args: argparse.Namespace, folder: Path) -> dict:
    out = folder / f"n{n}.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               __file__, "--worker", "--out", str(out), "--device", args.device, "--model", args.model,
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--threads-per-process", str(args.threads_per_process)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_process)}
    subprocess.run(command, check=True, cwd=folder, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="cnn", help="a conf/model/ name (default cnn)")
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up (default 3)")
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch (default 128)")
    parser.add_argument("--threads-per-process", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is warm-up)")
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, args, Path(tmp)) for n in args.processes]
    base = next((r["images_per_s"] for r in rows if r["processes"] == 1), None)
    print(f"kdexp DDP throughput: model={args.model} device={args.device} global batch={args.batch_size} "
          f"threads/process={args.threads_per_process}")
    print(f"{'processes':>9}  {'images/s':>10}  {'s/epoch':>8}  {'efficiency':>10}")
    for row in rows:
        n = row["processes"]
        eff = f"{row['images_per_s'] / (n * base):.0%}" if base else "n/a"
        print(f"{n:>9}  {row['images_per_s']:>10.0f}  {row['epoch_s']:>8.2f}  {eff:>10}")


if __name__ == "__main__":
    main()
