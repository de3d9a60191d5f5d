"""Helpers the test files share: plain functions, imported as `from helpers import ...` (tests/ is
on sys.path: pytest puts the folder of a rootdir conftest.py there). The fixtures are in conftest.py.

- the command line in a subprocess, isolated as the autouse fixture `isolated` isolates a test:
  `kdexp` (run to the end), `start_kdexp` and `finish` (a process to watch or signal);
- what a store holds: `runs_of`, `snapshot`;
- a toy data set and the shared loop on it: `toy_dataset`, `toy_loop`;
- `free_port`, `bench_speed` (benchmarks/bench_speed.py as a module), `read_csv`, `kl`.

MLflow, torch and kdexp are imported where they are used, so that importing this module (as
conftest.py does for every test) imports none of them."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]

SWEEP_ENV = "KDEXP_PARENT_RUN_ID"  # kdexp.tracking.SWEEP_ENV (not imported: that would import MLflow)
# Environment that would point a test at a store or a sweep that is not its own.
FOREIGN_ENV = ("MLFLOW_TRACKING_URI", SWEEP_ENV, "HYDRA_FULL_ERROR")


# --- the command line in a subprocess ----------------------------------------------------------


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{Path(folder) / 'mlflow.db'}"


def kdexp_env(cwd: Path, env: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a kdexp subprocess: this one, pointed at `cwd`'s own store, without an
    inherited HYDRA_FULL_ERROR or sweep parent; then `env` (a None value removes the variable)."""
    environ = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    environ["MLFLOW_TRACKING_URI"] = sqlite_uri(cwd)
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return environ


def kdexp(args: list[str], cwd: Path, timeout: float = 600, env: dict[str, str | None] | None = None,
          check: bool = False, module: str = "kdexp") -> subprocess.CompletedProcess:
    """Run `python -m kdexp ARGS` (or another `module`) in `cwd`, in the environment `kdexp_env`
    gives. `check=True` asserts exit code 0, showing the end of the output when it is not."""
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=kdexp_env(cwd, env),
                            capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def start_kdexp(args: list[str], cwd: Path, env: dict[str, str | None] | None = None,
                command: list[str] | None = None) -> subprocess.Popen:
    """Start `python -m kdexp ARGS` (or `python COMMAND ARGS`) in `cwd`, in the environment
    `kdexp_env` gives and unbuffered, its stdout and stderr in one pipe; for a test that watches or
    signals the process while it runs. `finish` waits for it."""
    return subprocess.Popen([sys.executable, *(command or ["-m", "kdexp"]), *args], cwd=cwd,
                            env=kdexp_env(cwd, {"PYTHONUNBUFFERED": "1", **(env or {})}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    """The output of a process `start_kdexp` started, which must exit with 0."""
    out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, out[-4000:]
    return out


def reference_and_killed(args: list[str], folder: Path, timeout: float = 300, poll: float = 0.05) -> tuple[Path, Path]:
    """`kdexp ARGS` run to the end in `folder/reference`, and again in `folder/crash` killed with
    SIGKILL as soon as its first student checkpoint is written; returns the two folders (the
    crashed run's checkpoint is `student_checkpoint(crash)`)."""
    import signal
    import time

    reference, crash = folder / "reference", folder / "crash"
    reference.mkdir(), crash.mkdir()
    finish(start_kdexp(args, reference), timeout=timeout)
    victim = start_kdexp(args, crash)
    deadline = time.time() + timeout
    while student_checkpoint(crash) is None:
        assert victim.poll() is None, victim.stdout.read()
        assert time.time() < deadline, "no student checkpoint in time"
        time.sleep(poll)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    return reference, crash


def student_checkpoint(folder: Path) -> Path | None:
    return next(folder.glob("outputs/checkpoints/*/*/student.pt"), None)


# --- what a store holds ------------------------------------------------------------------------------


def runs_of(cwd: Path | None = None, experiment: str = "kdexp") -> list:
    """The runs of `experiment` in `cwd`'s store (MLflow is pointed there), or without `cwd` in the
    store MLflow points at (the test's own, `isolated`)."""
    import mlflow

    if cwd is not None:
        mlflow.set_tracking_uri(sqlite_uri(cwd))
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def snapshot(cwd: Path) -> list[tuple]:
    """Each run of `cwd`'s store as (id, status, end time, metrics, artifact paths): equal before and
    after a command only if the command touched no run."""
    import mlflow

    runs = runs_of(cwd)
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri(cwd))
    return [(r.info.run_id, r.info.status, r.info.end_time, dict(r.data.metrics),
             sorted(a.path for a in client.list_artifacts(r.info.run_id))) for r in runs]


# --- a toy data set and the shared loop ----------------------------------------------------------


def toy_dataset(n: int):
    """`n` random 1x3x3 images (seed 0) labelled i % 3, the same split for training and test."""
    import torch

    from kdexp.data import memory as data

    g = torch.Generator().manual_seed(0)
    split = data.Split(torch.randn(n, 1, 3, 3, generator=g), torch.arange(n) % 3)
    return data.Dataset("toy", split, split, None, 3)


def toy_loop(dataset, batch_size: int, optimizer: str = "adam", lr: float = 0.01, logged: list | None = None):
    """The shared training loop on `dataset` (no augmentation, evaluation in batches of 16),
    `optimizer` adam or sgd (momentum 0.9) at `lr` without a schedule; each epoch's metrics are
    appended to `logged` when it is given."""
    from omegaconf import OmegaConf

    from kdexp.run.console import PhaseProgress
    import torch

    from kdexp.data.memory import MemorySource
    from kdexp.run.loop import Loop

    data_cfg = OmegaConf.create({"batch_size": batch_size, "eval_batch_size": 16, "augment": False})
    optim = {"name": optimizer, "lr": lr, "weight_decay": 0.0, "fused": False, "scheduler": "none"}
    if optimizer == "sgd":
        optim["momentum"] = 0.9
    on_epoch = (lambda phase, epoch, m: logged.append(m)) if logged is not None else (lambda *a: None)
    source = MemorySource(dataset, data_cfg, torch.device("cpu"))
    return Loop(source, OmegaConf.create(optim), PhaseProgress(False), on_epoch)


# --- the rest -------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_healthy(url: str) -> bool:
    """Whether an MLflow server answers `url`/health."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def spawn_ranks(target, world: int, *args, timeout: float = 120) -> None:
    """Run `target(rank, world, port, *args)` in `world` spawned processes that form one process
    group on a free port; asserts each exits 0."""
    import torch.multiprocessing as mp

    port = free_port()
    context = mp.get_context("spawn")
    procs = [context.Process(target=target, args=(rank, world, port, *args)) for rank in range(world)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout)
        assert proc.exitcode == 0


def bench_speed():
    """benchmarks/bench_speed.py, loaded as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("bench_speed", REPOSITORY / "benchmarks" / "bench_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def kl(p, q):
    """KL(p || q) of two distributions: tensors (a 0-d tensor) or sequences of floats (a float)."""
    if hasattr(p, "log"):
        return (p * (p.log() - q.log())).sum()
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
