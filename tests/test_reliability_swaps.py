"""Faults, third round (issue 27), the swaps and the launcher: a teacher file overwritten during a
sweep (case 4), another run's checkpoint copied into a run's folder (case 5), SIGTERM to a joblib
launcher alone (case 13). Each ends in one line and a state in MLflow that matches it."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST, compose_cfg
from helpers import finish, runs_of, start_kdexp
from kdexp.config.checks import ConfigError
from kdexp.models import factory as models_mod
from kdexp.run import faults
from kdexp.run.checkpoints import CheckpointError, Checkpoints
from kdexp.run.teacher_import import PINNED_ENV, pin_sweep_teachers, source_of

QUIET = [*FAST, "data.limit_train=300", "tracking.log_model=false"]


class _Lines:
    """A subprocess's output read on a thread; `on_line(line)` is called for each line."""

    def __init__(self, proc: subprocess.Popen, on_line=lambda line: None):
        self.text = ""
        self.thread = threading.Thread(target=self._read, args=(proc, on_line), daemon=True)
        self.thread.start()

    def _read(self, proc, on_line):
        for line in proc.stdout:
            self.text += line
            on_line(line)


def _split(runs):
    parents = [r for r in runs if r.data.tags.get("kdexp.role") == "sweep"]
    return parents, [r for r in runs if r.data.tags.get("kdexp.role") != "sweep"]


def _teacher_file(path: Path, seed: int) -> None:
    """Weights of the default teacher (untrained: `trainer.fail_at_chance=false` lets it teach)."""
    torch.save(models_mod.build(compose_cfg([]).teacher, (1, 28, 28), 10, seed).state_dict(), path)


# --- case 5: a checkpoint names its run ---


def test_a_checkpoint_copied_from_another_run_is_refused_naming_the_file_and_both_keys(tmp_path):
    t9, t7 = Checkpoints(tmp_path, "key-of-t9", "run9"), Checkpoints(tmp_path, "key-of-t7", "run7")
    t9.save("student", {"epoch": 3, "models": {"student": {"w": torch.ones(2)}}})
    t7.folder.mkdir(parents=True)
    t7.path("student").write_bytes(t9.path("student").read_bytes())  # the user's `cp`
    with pytest.raises(CheckpointError) as refused:
        t7.load("student")
    message = str(refused.value)
    assert "\n" not in message and str(t7.path("student")) in message
    assert "key-of-t9" in message and "key-of-t7" in message and "delete it" in message
    assert t9.load("student")["epoch"] == 3  # in its own run's folder it resumes, without the key


def test_a_checkpoint_written_before_keys_were_recorded_still_resumes_with_a_note(tmp_path, capsys):
    old = Checkpoints(tmp_path, "key", "run")
    old.folder.mkdir(parents=True)
    torch.save({"epoch": 2}, old.path("teacher"))  # as kdexp wrote it before this change
    assert old.load("teacher") == {"epoch": 2}
    assert "names no run key" in capsys.readouterr().out


# --- case 4: a sweep's jobs use one teacher ---


def test_a_teacher_file_changed_after_the_launch_is_refused_naming_both_digests(tmp_path, monkeypatch):
    path = tmp_path / "t.pt"
    _teacher_file(path, 0)
    cfg = compose_cfg([f"teacher.checkpoint={path}"])
    pinned = pin_sweep_teachers([cfg])
    monkeypatch.setenv(PINNED_ENV, pinned)
    at_launch = source_of(str(path), "teacher.checkpoint")["sha256"]  # unchanged: accepted
    _teacher_file(path, 1)
    with pytest.raises(ConfigError) as refused:
        source_of(str(path), "teacher.checkpoint")
    message = str(refused.value)
    assert message.startswith(f"teacher.checkpoint={path}: t.pt changed during the sweep (sha256 {at_launch[:12]}")
    assert "now)" in message and "restore the file, or start a new sweep" in message and "\n" not in message
    assert pin_sweep_teachers([compose_cfg([])]) is None  # no checkpoint: nothing pinned


@pytest.mark.slow
def test_a_teacher_file_overwritten_during_a_sweep_stops_it_and_the_restored_file_finishes_it(tmp_path):
    original, other = tmp_path / "t.pt", tmp_path / "other.pt"
    _teacher_file(original, 0)
    _teacher_file(other, 1)
    kept = original.read_bytes()
    args = ["-m", f"teacher.checkpoint={original}", "loss.temperature=2,8", *QUIET, "trainer.fail_at_chance=false"]

    def swap_after_the_first_import(line: str) -> None:  # job 0 has its teacher: overwrite the file
        if "imported from" in line and original.read_bytes() == kept:
            original.write_bytes(other.read_bytes())

    proc = start_kdexp(args, tmp_path)
    lines = _Lines(proc, swap_after_the_first_import)
    proc.wait(timeout=300)
    lines.thread.join(timeout=10)
    assert proc.returncode == 2, lines.text
    last = lines.text.strip().splitlines()[-1]
    assert last.startswith(f"kdexp: error: teacher.checkpoint={original}: t.pt changed during the sweep (sha256 "), last
    [parent], jobs = _split(runs_of(tmp_path))
    assert parent.info.status == "FAILED"
    assert [(j.info.status, j.data.params["loss.temperature"]) for j in jobs] == [("FINISHED", "2.0")]

    original.write_bytes(kept)  # restored: the same command finishes the sweep with the one teacher
    again = finish(start_kdexp(args, tmp_path))
    assert again.count("already FINISHED") == 1
    parents, jobs = _split(runs_of(tmp_path))
    assert len(jobs) == 2 and {j.info.status for j in jobs} == {"FINISHED"}
    assert len({j.data.tags["kdexp.teacher.lineage"] for j in jobs}) == 1
    assert next(p for p in parents if p.info.status == "FINISHED").data.tags["kdexp.jobs"] == "2/2 finished"


# --- case 13: SIGTERM to a joblib launcher ---


def test_a_job_taken_after_the_launcher_stopped_is_refused_and_a_busy_worker_is_marked(tmp_path):
    faults.job_started(str(tmp_path))
    busy = list((tmp_path / ".kdexp").glob("busy-*"))
    assert len(busy) == 1
    faults.job_ended(str(tmp_path))
    assert not busy[0].exists()
    (tmp_path / ".kdexp" / "stopping").touch()
    with pytest.raises(faults.SweepStopped):
        faults.job_started(str(tmp_path))


def test_a_stopped_launcher_without_busy_workers_marks_the_sweep_stopping_and_stops_as_before(tmp_path):
    seen = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        faults.stop_workers_first("no-such-run", None, str(tmp_path))
        assert signal.getsignal(signal.SIGTERM) is not before
        signal.raise_signal(signal.SIGTERM)
        assert seen == [signal.SIGTERM]  # then what SIGTERM did before: kdexp's Terminated
        assert (tmp_path / ".kdexp" / "stopping").exists()  # no worker takes another job
        assert signal.getsignal(signal.SIGTERM) is not None and faults._installed == {}
        signal.raise_signal(signal.SIGTERM)  # the handler before is back
        assert seen == [signal.SIGTERM, signal.SIGTERM]
    finally:
        faults.restore_stop_signals()
        signal.signal(signal.SIGTERM, before)


def _running_jobs(folder: Path) -> int:
    """Job runs RUNNING in `folder`'s store, read with sqlite directly (no MLflow in the loop)."""
    try:
        with sqlite3.connect(f"file:{folder / 'mlflow.db'}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("select count(*) from runs join tags on tags.run_uuid = runs.run_uuid "
                              "where runs.status = 'RUNNING' and tags.key = 'mlflow.parentRunId'").fetchone()[0]
    except sqlite3.Error:  # not created yet, or busy
        return 0


@pytest.mark.slow
def test_sigterm_to_a_joblib_launcher_kills_its_jobs_runs_and_the_same_command_finishes_the_sweep(tmp_path):
    from kdexp import tracking
    from kdexp.report import build

    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "loss.temperature=2,4,8", *QUIET]
    first = start_kdexp(args, tmp_path)
    lines = _Lines(first)
    deadline = time.time() + 600
    try:
        while _running_jobs(tmp_path) < 2:  # both workers have a job with an open run
            assert first.poll() is None and time.time() < deadline, lines.text
            time.sleep(0.2)
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    lines.thread.join(timeout=10)
    assert first.returncode == 143, lines.text
    last = lines.text.strip().splitlines()[-1]
    assert last.startswith("kdexp: error: terminated (SIGTERM); the run is marked KILLED") and "closed as KILLED" in last
    [parent], jobs = _split(runs_of(tmp_path))
    assert parent.info.status == "KILLED"
    assert len(jobs) == 2 and {j.info.status for j in jobs} == {"KILLED"}, [j.info.status for j in jobs]

    again = finish(start_kdexp(args, tmp_path))
    assert again.count("resuming MLflow run") == 2
    parents, jobs = _split(runs_of(tmp_path))
    assert len(jobs) == 3 and {j.info.status for j in jobs} == {"FINISHED"}
    new_parent = next(p for p in parents if p.info.status == "FINISHED")
    assert new_parent.data.tags["kdexp.jobs"] == "3/3 finished"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    record = tracking.find_sweep(uri, "", new_parent.info.run_id)
    assert len(build(record, tracking.sweep_children(uri, record)).ranked) == 3  # one comparison
