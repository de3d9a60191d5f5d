"""`torchrun --nproc_per_node=2 -m kdexp ...` on the embedded data, CPU and gloo (docs/distributed.md):
a 2-job sweep of which each job runs on 2 processes (one parent, two children, one teacher trained),
each job one MLflow run written by rank 0 with the numbers of a one-process run; a teacher trained on
two processes serving a one-process run from the model store; and a rank killed with SIGKILL: the
job ends within a minute, FAILED naming the rank, and the same command resumes it to the
uninterrupted run's numbers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from helpers import kdexp, runs_of, start_kdexp

pytestmark = pytest.mark.slow

# No batch norm and no dropout in the teacher: then two processes compute what one does, up to
# float summation order (batch-norm statistics and dropout draws are per process: the rule).
ARGS = ["trainer.epochs=2", "trainer.teacher_epochs=2", "data.train_size=1000", "data.test_size=500",
        "trainer.progress=false", "trainer.baseline=false", "teacher.batch_norm=false", "teacher.dropout=0"]
TORCHRUN = ["--standalone", "--nproc_per_node=2", "-m", "kdexp"]


def torchrun(args: list[str], cwd: Path):
    return kdexp([*TORCHRUN, *args], cwd, module="torch.distributed.run", check=True)


def curves(run_id: str, cwd: Path) -> dict[str, list[float]]:
    import mlflow

    client = mlflow.MlflowClient()
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(("teacher/", "student/"))]
    return {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)] for k in keys}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """torchrun around a 2-job sweep (loss.temperature=4,2): its folder, its output, its runs and
    the job at the default temperature (the reference the other runs are compared with)."""
    folder = tmp_path_factory.mktemp("ddp")
    out = torchrun(["-m", *ARGS, "loss.temperature=4,2"], folder).stdout
    runs = runs_of(folder)
    [run] = [r for r in runs if r.data.tags.get("kdexp.role") == "job" and float(r.data.params["loss.temperature"]) == 4]
    return folder, out, runs, run


def test_a_sweep_of_two_process_jobs_and_the_numbers_of_one_process(two_processes):
    folder, out, runs, run = two_processes
    [parent] = [r for r in runs if r.data.tags.get("kdexp.role") == "sweep"]
    jobs = [r for r in runs if r.data.tags.get("kdexp.role") == "job"]
    assert len(runs) == 3 and len(jobs) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}
    assert all(r.info.status == "FINISHED" and r.data.tags["kdexp.processes"] == "2" for r in jobs)
    assert sorted(r.data.tags["kdexp.teacher.source"] for r in jobs) == ["store", "trained"]  # trained once
    assert run.data.params["trainer.epochs"] == "2" and "student_model_uri" in run.data.tags
    # rank 0 alone prints: a summary per job; epoch lines of one teacher and two students
    assert out.count("kdexp · standard") == 2 and out.count("epoch 1: loss") == 3
    [launch] = folder.glob("outputs/multirun/*/*")  # one sweep folder for both ranks
    assert sorted(p.name for p in launch.iterdir() if p.is_dir()) == ["0", "1"]
    ddp = curves(run.info.run_id, folder)

    # The same job on one process (a new run: rerun=force), its teacher served by the model store
    # from the two-process run: the process count is in neither key.
    kdexp([*ARGS, "trainer.rerun=force"], folder, check=True)
    [one] = [r for r in runs_of(folder) if r.info.run_id not in {r.info.run_id for r in runs}]
    assert one.data.tags["kdexp.teacher.source"] == "store"
    assert one.data.tags["kdexp.teacher.lineage"] == run.data.tags["kdexp.teacher.lineage"]
    single = curves(one.info.run_id, folder)
    assert abs(single["student/test_acc"][-1] - ddp["student/test_acc"][-1]) <= 0.5
    for key in ("student/loss", "student/ce", "student/kd"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-4), key


def _rank_pid(launcher: int, rank: int) -> int:
    """The pid of torchrun's worker of `rank` (a child of the launcher with RANK=rank)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank}")


def test_a_killed_rank_fails_the_run_in_time_and_the_command_resumes(two_processes, tmp_path):
    _, _, _, uninterrupted = two_processes
    proc = start_kdexp([*TORCHRUN, *ARGS], tmp_path, command=["-m", "torch.distributed.run"])
    seen = []
    for line in proc.stdout:  # rank 0's first teacher epoch is checkpointed: kill rank 1 in the second
        seen.append(line)
        if "epoch 1: loss" in line:
            break
    os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
    killed = time.monotonic()
    rest = proc.communicate(timeout=120)[0]
    assert time.monotonic() - killed < 60
    assert proc.returncode != 0
    [failed] = runs_of(tmp_path)
    assert failed.info.status == "FAILED", "".join(seen) + rest
    assert failed.data.tags["error"].startswith("RankFailed: rank 1 (pid ")

    out = kdexp([*TORCHRUN, *ARGS], tmp_path, module="torch.distributed.run", check=True).stdout
    assert f"resuming MLflow run {failed.info.run_id}" in out
    [resumed] = runs_of(tmp_path)
    assert resumed.info.status == "FINISHED"
    # the reference is a sweep's job (torch threads per job differ): equal up to float rounding
    for key in ("teacher/test_acc", "student/test_acc"):
        assert resumed.data.metrics[key] == pytest.approx(uninterrupted.data.metrics[key], abs=0.2), key
    assert resumed.data.metrics["student/loss"] == pytest.approx(uninterrupted.data.metrics["student/loss"], rel=1e-4)


def test_two_nodes_on_one_machine_are_one_job_and_one_run(tmp_path):
    """Two torchrun agents, one process each, rendezvous on 127.0.0.1 as nodes 0 and 1
    (`--nnodes=2 --node_rank=…`, what a two-machine job does): one run, written by node 0."""
    from helpers import finish, free_port

    port = free_port()
    nodes = [start_kdexp(["--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1", "--master_addr=127.0.0.1",
                          f"--master_port={port}", "-m", "kdexp", *ARGS], tmp_path,
                         command=["-m", "torch.distributed.run"]) for rank in (0, 1)]
    outs = [finish(node, timeout=900) for node in nodes]
    [run] = runs_of(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["kdexp.processes"] == "2"
    assert outs[0].count("kdexp · standard") == 1 and "kdexp · standard" not in outs[1]
