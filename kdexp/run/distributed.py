"""One job on many processes: torch.distributed set up from torchrun's or SLURM's environment, the
trained models wrapped in DistributedDataParallel, and the few collectives the run needs.

The rule (docs/distributed.md): the same path runs on every rank; rank 0 alone writes to the
tracking store, the model store and the checkpoints, and every decision that changes control flow
(a FINISHED run skipped, a model-store hit, a checkpoint to resume) is made by rank 0 and
broadcast. `data.batch_size` is global (kdexp/data/source.py): each rank reads its `Shard` of every
global batch, so a job on N processes computes what it computes on one, up to float summation
order and batch-norm statistics (`trainer.sync_bn`).

Without a launcher (no WORLD_SIZE, no multi-task SLURM step) `current()` is one process and every
helper here is the identity: single-process runs pay nothing.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from kdexp.data.source import Shard


@dataclass(frozen=True)
class World:
    """This process's place in the job: global rank, process count, rank on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


_world = World()


def current() -> World:
    return _world


def from_env(environ: dict[str, str] | None = None) -> World:
    """The world torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or an `srun` step of SLURM (SLURM_PROCID,
    SLURM_STEP_NUM_TASKS, SLURM_LOCALID) describes; one process when neither does. SLURM's own
    variables count only inside a job step with several tasks (an `salloc` shell sets SLURM_NTASKS
    for a single process too)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return World(int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return World()


def _slurm_rendezvous(world: World) -> None:
    """MASTER_ADDR/MASTER_PORT for an srun step: submitit's `TorchDistributedEnvironment` when the
    step is a submitit job (it reads the node list); otherwise they must be exported by the script."""
    if "MASTER_ADDR" in os.environ:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except Exception as err:  # noqa: BLE001 - any failure leaves the one-line reason below
        raise RuntimeError(f"rank {world.rank}: MASTER_ADDR is not set and SLURM's node list could not be "
                           f"read ({err}); export MASTER_ADDR and MASTER_PORT in the sbatch script") from None


def init(timeout_s: float) -> World:
    """Join the job's process group (gloo for CPU tensors, NCCL for CUDA ones where there are GPUs);
    a collective that waits longer than `timeout_s` (a rank that died) raises on every other rank."""
    global _world
    world = from_env()
    if not world.active or dist.is_initialized():
        _world = world
        return world
    if "WORLD_SIZE" not in os.environ:
        _slurm_rendezvous(world)
        os.environ.update(RANK=str(world.rank), WORLD_SIZE=str(world.size), LOCAL_RANK=str(world.local_rank))
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    _world = world
    store().set(f"kdexp/pid/{world.rank}", f"{socket.gethostname()} {os.getpid()}")
    if not world.is_main:
        from kdexp.run.console import console

        console.quiet = True  # one summary, one set of progress lines: rank 0's
    return world


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """`cuda` → this rank's GPU (`cuda:LOCAL_RANK`); other devices as they are."""
    if device.type == "cuda" and _world.active:
        return torch.device("cuda", _world.local_rank % torch.cuda.device_count())
    return device


# --- collectives: the identity on one process --------------------------------------------------


def broadcast(value: Any = None) -> Any:
    """Rank 0's `value` on every rank (any picklable object: a decision, a state dict)."""
    if not _world.active:
        return value
    box = [value if _world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over ranks, in place (and returned)."""
    if _world.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


# --- the trained models ---------------------------------------------------------------------------


class _Trained(nn.Module):
    """Every module a phase trains (its models and its methods' parts) as one module whose forward
    is the phase's step loss: DistributedDataParallel sees every parameter the step uses, whichever
    closure of the family or method calls the model."""

    def __init__(self, modules: dict[str, nn.Module], step_loss: Callable):
        super().__init__()
        self.trained = nn.ModuleDict(modules)
        self.step_loss = step_loss

    def forward(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.step_loss(x, y, idx)


def step_fn(trained: dict[str, nn.Module], step_loss: Callable, device: torch.device) -> Callable:
    """The phase's step loss, its gradients averaged over ranks by DistributedDataParallel (one
    process: `step_loss` itself). Gradients are views of DDP's buckets (no copy, and no warning
    about a conv's gradient strides)."""
    params = [p for m in trained.values() for p in m.parameters() if p.requires_grad]
    if not _world.active or not params:
        return step_loss
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    # A conv with one input channel has a gradient whose strides DDP's bucket does not copy: harmless.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(_Trained(trained, step_loss), device_ids=ids, gradient_as_bucket_view=True)


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """`model` with its BatchNorm layers normalising over the whole global batch (all ranks)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if _world.active else model


def shard_weight(batch_rows: int, step: int, train_size: int, batch_size: int) -> float:
    """The factor on this rank's mean loss that makes DDP's average of the ranks' gradients the
    gradient of the global batch's mean loss: rows here × ranks / rows of the global batch (1 when
    the batch divides evenly; the last, short global batch may not)."""
    if not _world.active:
        return 1.0
    global_rows = min(batch_size, train_size - (step - 1) * batch_size)
    return batch_rows * _world.size / global_rows


def check_batches(train_size: int, batch_size: int) -> None:
    """Every rank must get rows of every global batch (a rank without rows has no mean loss to
    step on): refuse, in one line before training, a last batch with fewer rows than ranks."""
    last = train_size % batch_size
    if _world.active and 0 < last < _world.size:
        from kdexp.config.checks import ConfigError

        raise ConfigError(f"data.batch_size={batch_size} leaves a last batch of {last} of the {train_size} "
                          f"training samples, fewer than the {_world.size} processes; choose a batch size "
                          f"that leaves 0 or at least {_world.size}")


class FollowerRun:
    """The MLflow run as a rank other than 0 holds it: its id (checkpoints are filed under it) and
    nothing else; what it would log, rank 0 logs."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def logged_steps(self, key: str) -> set[int]:
        return set()

    def params(self, params: dict) -> list[str]:
        return []

    def metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def tags(self, tags: dict) -> None:
        pass

    def text(self, text: str, path: str) -> None:
        pass

    def folder(self, folder, artifact_path: str) -> None:
        pass

    def finish(self) -> None:
        pass

    def fail(self, err: BaseException) -> None:
        pass


# --- one Hydra output folder for the job ------------------------------------------------------------

TIMEOUT_KEY = "trainer.dist_timeout"


def timeout_from(args: list[str], default: float) -> float:
    """`trainer.dist_timeout` from the command line (the process group is joined before Hydra
    composes the config: the folder every rank writes to is rank 0's), else `default`."""
    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == TIMEOUT_KEY and value:
            try:
                return float(value)
            except ValueError:
                from kdexp.config.checks import ConfigError

                raise ConfigError(f"{TIMEOUT_KEY}={value} is not a number of seconds") from None
    return default


_shared_folder = {"pending": False}  # rank 0 under torchrun, until its first job has its folder


def share_output_dir(run_dir: str, sweep_dir: str | None) -> None:
    """Rank 0, once its Hydra job has an output folder: send it to the other ranks, which wait for
    it in `follower_overrides` before composing their own config."""
    if _shared_folder["pending"]:
        _shared_folder["pending"] = False
        broadcast((run_dir, sweep_dir))


def follower_overrides() -> list[str]:
    """Hydra overrides of a rank other than 0: rank 0's output folder (its `now` and launch token
    are rank 0's), and no `.hydra/` copy nor job log of its own there."""
    if not _world.active or _world.is_main:
        _shared_folder["pending"] = _world.active
        return []
    run_dir, sweep_dir = broadcast()
    extra = [f"hydra.run.dir={run_dir}", "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    # a sweep: rank 0's folder, and rank 0's parent run alone (no sweep callback here)
    return extra + ([f"hydra.sweep.dir={sweep_dir}", "~hydra.callbacks.mlflow_sweep"] if sweep_dir else [])


def check_settings(cfg, device: torch.device) -> None:
    """Settings torch can run only on some devices, refused in one line before training."""
    if cfg.trainer.sync_bn and device.type != "cuda":
        from kdexp.config.checks import ConfigError

        raise ConfigError(f"trainer.sync_bn=true needs CUDA devices (torch's SyncBatchNorm has no {device.type} "
                          f"kernels); use trainer.sync_bn=false here")


def store():
    """The job's key-value store (torchrun's or the process group's TCPStore)."""
    return dist.distributed_c10d._get_default_store()
