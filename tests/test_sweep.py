"""Multiruns through the real CLI: parent/child runs, teachers trained once, parallel jobs, Optuna."""

import os
import re
import sys

import pytest

from conftest import FAST
from helpers import kdexp, runs_of, sqlite_uri, start_kdexp

pytestmark = pytest.mark.slow
QUIET = [*FAST, "data.limit_train=300", "tracking.log_model=false"]


def split(runs):
    parents = [r for r in runs if r.data.tags.get("kdexp.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_2x2_sweep_one_parent_four_children_one_teacher(tmp_path):
    kdexp(["-m", "loss.temperature=2,4", "loss.alpha=0.1,0.5", *QUIET], tmp_path, check=True)
    parents, children = split(runs_of(tmp_path))
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert len({c.data.tags["kdexp.teacher.lineage"] for c in children}) == 1
    assert sorted(c.data.tags["kdexp.teacher.source"] for c in children) == ["store"] * 3 + ["trained"]
    teachers = [r for r in runs_of(tmp_path, "kdexp-store") if r.data.tags["kdexp.label"].startswith("teacher")]
    assert len(teachers) == 1
    assert parents[0].data.tags["kdexp.sweep_dir"].startswith(str(tmp_path / "outputs" / "multirun"))
    assert "kdexp.best_run" in parents[0].data.tags
    swept = {c.data.tags["overrides"].split(" ")[0] + " " + c.data.tags["overrides"].split(" ")[1] for c in children}
    assert swept == {f"loss.temperature={t} loss.alpha={a}" for t in (2, 4) for a in (0.1, 0.5)}


def test_joblib_sweep_on_a_fresh_store_finishes_every_job(tmp_path):
    kdexp(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "loss.temperature=2,4,8", *QUIET], tmp_path,
          check=True)
    parents, children = split(runs_of(tmp_path))
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    # Threads were split between the two workers.
    assert {c.data.params["trainer.threads"] for c in children} == {str(max(1, len(os.sched_getaffinity(0)) // 2))}
    teachers = [r for r in runs_of(tmp_path, "kdexp-store") if r.data.tags["kdexp.label"].startswith("teacher")]
    assert len(teachers) == 1


def test_eight_parallel_jobs_on_a_fresh_store_all_finish(tmp_path):
    # 200 images, one epoch: some seeds' teachers stay near chance, which is not what this tests.
    kdexp(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=8", "seed=0,1,2,3,4,5,6,7",
           *QUIET, "data.limit_train=200", "trainer.fail_at_chance=false"], tmp_path, timeout=900, check=True)
    parents, children = split(runs_of(tmp_path))
    assert len(children) == 8 and {c.info.status for c in children} == {"FINISHED"}
    assert parents[0].info.status == "FINISHED"


def test_rerun_of_a_sweep_skips_finished_jobs(tmp_path):
    args = ["-m", "loss.temperature=2,4", *QUIET]
    kdexp(args, tmp_path, check=True)
    again = kdexp(args, tmp_path, check=True)
    assert again.stdout.count("already FINISHED") == 2
    # Reused jobs are named by this sweep's axes, not by every override they were launched with.
    assert re.search(r"best job: loss\.temperature=[24] → student_acc", again.stdout), again.stdout[-2000:]
    parents, children = split(runs_of(tmp_path))
    assert len(children) == 2 and len(parents) == 2
    # The second sweep's parent points at the reused runs, so its report still lists both jobs.
    from kdexp.tracking import find_sweep, sweep_children

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    reused = sweep_children(uri, find_sweep(uri, "kdexp"))
    assert sorted(r.tags["overrides"].split(" ")[0] for r in reused) == ["loss.temperature=2", "loss.temperature=4"]
    assert {r.run_id for r in reused} == {c.info.run_id for c in children}


def test_optuna_search_reports_the_best_trial(tmp_path):
    result = kdexp(["hparams_search=optuna_t_alpha", "hydra.sweeper.n_trials=4", *QUIET,
                    "data.val_size=100"], tmp_path, check=True)
    assert "Best parameters" in result.stdout + result.stderr
    assert "best job:" in result.stdout
    parents, children = split(runs_of(tmp_path))
    assert len(children) == 4 and all(c.data.tags["kdexp.objective"] == "student_val_acc" for c in children)
    assert parents[0].data.metrics["best_student_val_acc"] == max(
        c.data.metrics["student_val_acc"] for c in children)


def test_two_identical_sweeps_at_once_in_one_folder(tmp_path):
    """Both finish; each job's config runs once (the other waits on its lock, then skips it);
    the store has one teacher and every checkpoint folder belongs to one run."""
    args = ["-m", "loss.temperature=2,4", *QUIET, "trainer.keep_checkpoints=true"]
    # The launching process creates the store; create it first, as a parallel launch would.
    kdexp(["--cfg", "job"], tmp_path, check=True)
    from kdexp.tracking import prepare
    prepare(sqlite_uri(tmp_path), "kdexp")
    procs = [start_kdexp(args, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    _, children = split(runs_of(tmp_path))
    assert sorted(c.data.tags["overrides"].split(" ")[0] for c in children) == [
        "loss.temperature=2", "loss.temperature=4"]
    assert {c.info.status for c in children} == {"FINISHED"}
    assert sum(out.count("already FINISHED") for out in outs) == 2
    teachers = [r for r in runs_of(tmp_path, "kdexp-store") if r.data.tags["kdexp.label"].startswith("teacher")]
    assert len(teachers) == 1
    run_ids = {c.info.run_id for c in children}
    folders = [f for f in (tmp_path / "outputs" / "checkpoints").glob("*/*") if f.parent.name != ".locks"]
    assert len(folders) == 2
    for folder in folders:
        assert folder.name in run_ids


def test_an_in_process_sweep_creates_its_store_once_and_each_job_reads_its_own_data(tmp_path, monkeypatch):
    """Hydra's basic launcher runs the jobs in this process: the launcher creates the store once,
    and each job reads its data set itself (the per-process cache saved 1.9 % of a sweep and was
    removed: docs/speed.md)."""
    from kdexp.cli import main as cli
    from kdexp.data import memory as data
    from kdexp.tracking import connect, create

    spawned = []  # whether each call started a child that creates the store (a fresh one: the first)
    real_start = create.start
    monkeypatch.setattr(create, "start", lambda uri, names: real_start(uri, names) or spawned.append(bool(connect.CREATING)))
    reads = []
    real_read = data._read
    monkeypatch.setattr(data, "_read", lambda cfg: reads.append(cfg.limit_train) or real_read(cfg))
    quiet = [o for o in QUIET if not o.startswith("data.limit_train=")]
    monkeypatch.setattr(sys, "argv", ["kdexp", "-m", "data.limit_train=256,384", "loss.temperature=2,4",
                                      "trainer.baseline=false", *quiet])
    cli.main()
    assert reads == [256, 256, 384, 384]  # the temperature varies fastest: two jobs per data set
    assert spawned == [True, False, False, False, False]  # the launcher's, then each job's (the store exists)
    assert not connect.CREATING
    parents, children = split(runs_of(tmp_path))
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert sorted(c.data.params["data.limit_train"] for c in children) == ["256", "256", "384", "384"]
