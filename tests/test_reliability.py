"""Faults a real user hits (issue 17): parallel first runs, vanished artifacts, SIGTERM, a full disk,
resuming with changed settings, interrupted sweeps, checkpoint hygiene, a foreign sqlite file."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest

from conftest import FAST, compose_cfg
from helpers import REPOSITORY, finish, kdexp_env, runs_of, start_kdexp
from kdexp.run import experiment
from kdexp import tracking
from kdexp.run.checkpoints import CheckpointError, Checkpoints
from kdexp.config.checks import ConfigError

QUIET = [*FAST, "data.limit_train=300", "tracking.log_model=false"]
def _split(runs):
    parents = [r for r in runs if r.data.tags.get("kdexp.role") == "sweep"]
    return parents, [r for r in runs if r.data.tags.get("kdexp.role") != "sweep"]


class _Lines:
    """A subprocess's output read on a thread, so a test can wait for a line while it runs."""

    def __init__(self, proc: subprocess.Popen):
        self.text = ""
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc):
        for line in proc.stdout:
            self.text += line


def _wait_for(condition, proc, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the process ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- the store: a foreign sqlite file, store creation from many processes, orphans, pages ---


def test_sqlite_file_that_is_not_an_mlflow_store_is_refused_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as connection:
        connection.execute("create table invoices (id integer, total real)")
    before = db.read_bytes()
    with pytest.raises(ConfigError) as err:
        tracking.prepare(f"sqlite:///{db}", "kdexp")
    assert "not an MLflow store" in str(err.value) and "invoices" in str(err.value)
    assert "\n" not in str(err.value)
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_store_created_by_many_processes_at_once(tmp_path, attempt):
    """Fresh folder, four processes opening the store at the same moment: all succeed, one store."""
    code = ("import sys, time; from kdexp import tracking; time.sleep(max(0, float(sys.argv[1]) - time.time()));"
            "print(tracking.prepare(None, 'kdexp')[1])")
    start = str(time.time() + 3)
    procs = [start_kdexp([code, start], tmp_path, command=["-c"]) for _ in range(4)]
    outs = [finish(p, 120) for p in procs]
    assert len({out.split()[-1] for out in outs}) == 1, outs  # one experiment id for all


def test_orphan_running_store_entry_is_marked_failed(store):
    client = mlflow.MlflowClient()
    exp_id = client.create_experiment("kdexp-store")
    orphan = client.create_run(exp_id, tags={"kdexp.store_key": "k" * 24, "kdexp.role": "store"})
    assert tracking.find_stored("kdexp-store", "k" * 24) is None
    entry = client.get_run(orphan.info.run_id)
    assert entry.info.status == "FAILED" and "writer stopped" in entry.data.tags["kdexp.store_lost"]


def test_search_pages_through_every_run(store, monkeypatch):
    from kdexp.tracking import connect

    client = mlflow.MlflowClient()
    exp_id = client.create_experiment("paged")
    for _ in range(5):
        client.create_run(exp_id, tags={"kdexp.role": "job"})
    monkeypatch.setattr(connect, "PAGE", 2)
    assert len(connect.search_all(client, [exp_id], "tags.`kdexp.role` = 'job'")) == 5


@pytest.mark.slow
def test_git_commit_is_kdexp_s_own_repository_not_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no repository here
    head = subprocess.run(["git", "-C", str(REPOSITORY), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("kdexp does not run from a git checkout here")
    tracking.git_commit.cache_clear()
    assert tracking.git_commit() == head.stdout.strip()


# --- checkpoints: full messages, full disk, hygiene ---


def test_damaged_checkpoints_name_the_file_and_the_whole_cause(tmp_path):
    ckpts = Checkpoints(tmp_path, "key", "run")
    ckpts.folder.mkdir(parents=True)
    ckpts.path("teacher").write_bytes(b"")
    with pytest.raises(CheckpointError) as empty:
        ckpts.load("teacher")
    assert "empty (0 bytes)" in str(empty.value) and str(ckpts.path("teacher")) in str(empty.value)
    ckpts.path("student").write_bytes(b"PK\x03\x04" + b"x" * 300)
    with pytest.raises(CheckpointError) as broken:
        ckpts.load("student")
    message = str(broken.value)
    assert "\n" not in message and message.endswith("or run with trainer.rerun=force")


def test_full_disk_while_checkpointing_removes_the_temporary_file(tmp_path, monkeypatch):
    ckpts = Checkpoints(tmp_path, "key", "run")
    ckpts.save("teacher", {"epoch": 1})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("kdexp.run.checkpoints.os.fsync", no_space)
    with pytest.raises(OSError) as err:
        ckpts.save("teacher", {"epoch": 2})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(ckpts.path("teacher"))
    assert [p.name for p in ckpts.folder.iterdir()] == ["teacher.pt"]
    assert ckpts.load("teacher") == {"epoch": 1}  # the last complete epoch is intact


def _cli_in_process(args: list[str], monkeypatch) -> None:
    from kdexp.cli import main as cli

    monkeypatch.setattr(sys, "argv", ["kdexp", *args])
    cli.main()


@pytest.mark.slow
def test_full_disk_ends_the_run_failed_in_one_line_and_the_same_command_resumes(store, monkeypatch, capsys):
    args = [*QUIET, "trainer.epochs=2"]
    real_fsync, calls = os.fsync, []

    def fills_up(fd):  # the teacher's checkpoint is written, then the disk is full
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr("kdexp.run.checkpoints.os.fsync", fills_up)
    with pytest.raises(SystemExit) as stop:
        _cli_in_process(args, monkeypatch)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("kdexp: error: no space left on the device while writing ") and ".pt;" in err
    [crashed] = runs_of()
    assert crashed.info.status == "FAILED"
    assert not list(Path("outputs").rglob("*.tmp"))

    monkeypatch.setattr("kdexp.run.checkpoints.os.fsync", real_fsync)
    _cli_in_process(args, monkeypatch)
    assert "resuming MLflow run" in capsys.readouterr().out
    [resumed] = runs_of()
    assert resumed.info.run_id == crashed.info.run_id and resumed.info.status == "FINISHED"
    assert "error" not in resumed.data.tags  # the earlier attempt's error no longer applies


@pytest.mark.slow
def test_finished_runs_leave_no_checkpoints_unless_asked(store):
    experiment.run(compose_cfg(["tracking.log_model=false"]), [])
    assert not list(Path("outputs/checkpoints").rglob("*.pt"))
    experiment.run(compose_cfg(["tracking.log_model=false", "seed=1", "trainer.keep_checkpoints=true"]), [])
    assert {p.name for p in Path("outputs/checkpoints").rglob("*.pt")} == {"teacher.pt", "baseline.pt", "student.pt"}


# --- resume with changed settings; vanished store files ---


@pytest.mark.slow
def test_resume_with_changed_threads_and_store_reuse_records_them_as_tags(store, monkeypatch):
    from kdexp.run import checkpoints as checkpoint

    save = checkpoint.Checkpoints.save

    def killed_in_student(self, phase, state):
        save(self, phase, state)
        if phase == "student":
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.Checkpoints, "save", killed_in_student)
    with pytest.raises(KeyboardInterrupt):
        experiment.run(compose_cfg(["tracking.log_model=false", "trainer.epochs=2"]), [])
    [killed] = runs_of()
    assert killed.info.status == "KILLED" and "error" in killed.data.tags
    monkeypatch.setattr(checkpoint.Checkpoints, "save", save)

    experiment.run(compose_cfg(["tracking.log_model=false", "trainer.epochs=2", "trainer.threads=1",
                                "store.reuse=false"]), [])
    [resumed] = runs_of()
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.params["trainer.threads"] == "0"  # params keep what the run started with
    assert resumed.data.tags["kdexp.resumed_with.trainer.threads"] == "1 (was 0)"
    assert resumed.data.tags["kdexp.resumed_with.store.reuse"] == "False (was True)"
    assert "error" not in resumed.data.tags


@pytest.mark.slow
def test_vanished_store_files_are_marked_and_retrained_in_one_line(store, capsys):
    import shutil

    experiment.run(compose_cfg(["tracking.log_model=false"]), [])
    stored = runs_of(experiment="kdexp-store")
    assert len(stored) == 3  # teacher, baseline, the teacher's logits
    shutil.rmtree("mlruns")
    capsys.readouterr()

    experiment.run(compose_cfg(["tracking.log_model=false", "loss.temperature=2"]), [])
    out = capsys.readouterr().out
    lost = [line for line in out.splitlines() if "is unusable" in line]
    assert len(lost) == 3 and all("training it again" in line for line in lost), out
    latest = max(runs_of(), key=lambda r: r.info.start_time)
    assert latest.info.status == "FINISHED"
    assert latest.data.tags["kdexp.teacher.source"] == "trained"
    assert latest.data.tags["kdexp.teacher.logits"] == "computed"
    entries = runs_of(experiment="kdexp-store")
    assert sorted(e.info.status for e in entries) == ["FAILED"] * 3 + ["FINISHED"] * 3
    assert all("kdexp.store_lost" in e.data.tags for e in entries if e.info.status == "FAILED")


# --- signals ---


@pytest.mark.slow
def test_sigterm_marks_the_run_killed_and_the_same_command_resumes_to_identical_metrics(tmp_path):
    args = [*QUIET, "data.limit_train=1000", "trainer.epochs=4"]
    reference_dir, victim_dir = tmp_path / "reference", tmp_path / "victim"
    reference_dir.mkdir(), victim_dir.mkdir()
    finish(start_kdexp(args, reference_dir))

    victim = start_kdexp(args, victim_dir)
    _wait_for(lambda: list(victim_dir.glob("outputs/checkpoints/*/*/student.pt")), victim, "a student checkpoint")
    victim.send_signal(signal.SIGTERM)
    out = victim.communicate(timeout=120)[0]
    assert victim.returncode == 143, out
    assert out.strip().splitlines()[-1].startswith("kdexp: error: terminated (SIGTERM); the run is marked KILLED")
    [killed] = runs_of(victim_dir)
    assert killed.info.status == "KILLED"

    assert "resuming MLflow run" in finish(start_kdexp(args, victim_dir))
    [resumed], [reference] = runs_of(victim_dir), runs_of(reference_dir)
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    keys = ("student_acc", "baseline_acc", "teacher_acc", "kd_gain")
    assert {k: resumed.data.metrics[k] for k in keys} == {k: reference.data.metrics[k] for k in keys}


# --- parallel launches ---


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(2))
def test_two_first_runs_at_once_in_a_fresh_folder_both_finish(tmp_path, attempt):
    procs = [start_kdexp([*QUIET, "data.limit_train=200"], tmp_path),
             start_kdexp([*QUIET, "data.limit_train=200", "loss.temperature=2"], tmp_path)]
    for proc in procs:
        finish(proc)
    runs = runs_of(tmp_path)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.slow
def test_two_sweeps_started_in_the_same_second_have_their_own_folders_and_parents(tmp_path):
    args = ["-m", "loss.temperature=2,4", *QUIET, "data.limit_train=200"]
    procs = [start_kdexp(args, tmp_path), start_kdexp(args, tmp_path)]
    outs = [finish(proc) for proc in procs]
    parents, jobs = _split(runs_of(tmp_path))
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    assert len({p.data.tags["kdexp.sweep_dir"] for p in parents}) == 2
    assert all(Path(p.data.tags["kdexp.sweep_dir"], "multirun.yaml").is_file() for p in parents)
    assert len(jobs) == 2  # each config trained once; the other launch reused it
    for parent in parents:  # and each parent still counts both jobs
        assert parent.data.tags["kdexp.jobs"] == "2/2 finished"
    assert all("best job:" in out for out in outs)


# --- an interrupted sweep, run again ---


@pytest.mark.slow
def test_interrupted_sweep_run_again_is_one_comparison(tmp_path):
    from kdexp.report import build

    args = ["-m", "loss.temperature=1,2,4", *QUIET, "trainer.epochs=3", "data.limit_train=600"]
    first = start_kdexp(args, tmp_path)
    lines = _Lines(first)
    # Interrupt the second job once the first has finished (its summary printed) and the second
    # has a student checkpoint.
    _wait_for(lambda: "MLflow run " in lines.text and list(tmp_path.glob("outputs/checkpoints/*/*/student.pt")),
              first, "the second job's student checkpoint")
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
    lines.thread.join(timeout=10)
    assert first.returncode == 143, lines.text
    assert "sweep parent run" in lines.text.strip().splitlines()[-1]
    [old_parent], _ = _split(runs_of(tmp_path))
    assert old_parent.info.status == "KILLED"

    again = finish(start_kdexp(args, tmp_path))
    assert again.count("already FINISHED") == 1 and again.count("resuming MLflow run") == 1
    parents, jobs = _split(runs_of(tmp_path))
    assert {p.info.status for p in parents} == {"KILLED", "FINISHED"}
    assert len(jobs) == 3 and {j.info.status for j in jobs} == {"FINISHED"}
    new_parent = next(p for p in parents if p.info.status == "FINISHED")
    assert new_parent.data.tags["kdexp.jobs"] == "3/3 finished"
    best = max(jobs, key=lambda j: j.data.metrics["student_acc"])
    assert new_parent.data.tags["kdexp.best_run"] == best.info.run_id
    # named by the sweep's axis, the overrides every job shares left out
    assert f"best job: {best.data.tags['overrides'].split(' ')[0]} → student_acc" in again
    assert new_parent.data.tags["mlflow.note.content"].count("| FINISHED") == 3

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    report = build(*(lambda p: (p, tracking.sweep_children(uri, p)))(tracking.find_sweep(uri, "kdexp")))
    assert len(report.ranked) == 3


@pytest.mark.slow
def test_a_sweep_parent_whose_launcher_died_is_closed_by_the_next_launch(store):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _, exp_id = tracking.prepare(None, "kdexp")
    client = mlflow.MlflowClient()
    orphan, alive = (client.create_run(exp_id, tags={"kdexp.role": "sweep", "kdexp.sweep_dir": "/x",
                                                     "kdexp.launcher": f"{socket.gethostname()}:{pid}"})
                     for pid in (dead.stdout.strip(), os.getpid()))
    tracking.start_sweep(None, "kdexp", str(Path("outputs/multirun/new").absolute()), [])
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"  # a sweep still going


@pytest.mark.slow
def test_a_sweep_with_a_bad_base_config_stops_in_one_line_before_any_run(tmp_path):
    proc = start_kdexp(["-m", "loss.temperature=0", "seed=0,1"], tmp_path)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and len(out.strip().splitlines()) == 1, out
    assert out.startswith("kdexp: error: loss.temperature=0")
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_store_half_created_on_a_full_disk_is_removed_so_the_next_try_starts_clean(tmp_path, monkeypatch):
    import mlflow.store.db.utils as db_utils

    from kdexp.tracking import connect

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    migrate = db_utils._initialize_tables

    def full_disk(engine):  # the migration stops part-way, as on a full disk
        with engine.begin() as connection:
            connection.exec_driver_sql("create table alembic_version (version_num varchar(32))")
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(db_utils, "_initialize_tables", full_disk)
    with pytest.raises(ConfigError, match="disk is full"):
        tracking.prepare(uri, "kdexp")
    assert not (tmp_path / "mlflow.db").exists()
    monkeypatch.setattr(db_utils, "_initialize_tables", migrate)
    # The next command (a new process) creates the store as if nothing had happened.
    code = f"from kdexp import tracking; print(tracking.prepare({uri!r}, 'kdexp')[1])"
    retry = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=kdexp_env(tmp_path),
                           capture_output=True, text=True, timeout=120)
    assert retry.returncode == 0, retry.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("gap", [0.01, 0.05])
def test_ctrl_c_twice_marks_the_run_killed_and_the_same_command_resumes(tmp_path, gap):
    """Two SIGINTs in quick succession (the second lands while the first is being recorded): the run
    is KILLED, not FINISHED by MLflow's exit handler, and the same command resumes it."""
    args = [*QUIET, "data.limit_train=1000", "trainer.epochs=4"]
    victim = start_kdexp(args, tmp_path)
    _wait_for(lambda: list(tmp_path.glob("outputs/checkpoints/*/*/student.pt")), victim, "a student checkpoint")
    victim.send_signal(signal.SIGINT)
    time.sleep(gap)
    victim.send_signal(signal.SIGINT)
    out = victim.communicate(timeout=120)[0]
    assert victim.returncode == 130, out
    assert "Traceback" not in out, out
    [killed] = runs_of(tmp_path)
    assert killed.info.status == "KILLED", (killed.info.status, killed.data.tags.get("error"))
    again = finish(start_kdexp(args, tmp_path))
    assert "resuming MLflow run" in again
    [resumed] = runs_of(tmp_path)
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"


@pytest.mark.slow
def test_sighup_the_terminal_closed_marks_the_run_killed_in_one_line(tmp_path):
    args = [*QUIET, "data.limit_train=1000", "trainer.epochs=4"]
    victim = start_kdexp(args, tmp_path)
    _wait_for(lambda: list(tmp_path.glob("outputs/checkpoints/*/*/student.pt")), victim, "a student checkpoint")
    victim.send_signal(signal.SIGHUP)
    out = victim.communicate(timeout=120)[0]
    assert victim.returncode == 129, out
    assert out.strip().splitlines()[-1].startswith("kdexp: error: terminated (SIGHUP); the run is marked KILLED")
    [killed] = runs_of(tmp_path)
    assert killed.info.status == "KILLED"


def test_a_hot_journal_left_by_a_kill_mid_write_is_rolled_back_not_refused(tmp_path):
    """kill -9 inside a write transaction leaves `mlflow.db-journal`; the store probe used to open
    the file read-only, could not roll it back, and refused a healthy store."""
    import sqlite3

    from kdexp.tracking.connect import _tables

    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as connection:
        connection.execute("create table experiments (id integer)")
        connection.execute("create table alembic_version (v text)")
        connection.execute("insert into experiments values (1)")
    writer = (f"import os, sqlite3; c = sqlite3.connect({str(db)!r}, isolation_level=None); "
              "c.execute('pragma cache_size=1'); c.execute('begin immediate'); "
              "c.execute('insert into experiments select 2 from (select 1 union all select 1)'); "
              "c.executemany('insert into experiments values (?)', [(3,)] * 20000); os._exit(9)")
    subprocess.run([sys.executable, "-c", writer], check=False)
    assert (tmp_path / "mlflow.db-journal").stat().st_size > 0  # hot: the kill left it
    assert _tables(db) == ["alembic_version", "experiments"]
    with sqlite3.connect(db) as connection:  # the unfinished transaction is gone, the committed row kept
        assert connection.execute("select id from experiments").fetchall() == [(1,)]


def test_an_unreachable_tracking_server_is_one_line_within_seconds(tmp_path):
    """Nothing listens at the URI: one line naming it (credentials left out) and what to do, in
    seconds rather than MLflow's minutes of retries."""
    from helpers import free_port
    from kdexp.tracking.connect import check_reachable

    port = free_port()
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        check_reachable(f"http://alice:secret@127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert message.startswith(f"tracking.uri=http://127.0.0.1:{port}: no MLflow server answers there within 2 s")
    assert "secret" not in message and "\n" not in message
    check_reachable("sqlite:///mlflow.db")  # a local store is not a server: nothing to reach


@pytest.mark.slow
def test_kdexp_against_an_unreachable_server_stops_in_one_line(tmp_path):
    from helpers import free_port

    started = time.monotonic()
    proc = start_kdexp(QUIET, tmp_path, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"})
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 2 and time.monotonic() - started < 120, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[-1].startswith("kdexp: error: tracking.uri=http://127.0.0.1:") and "Traceback" not in out


def test_a_signal_during_a_store_write_takes_effect_right_after_it():
    """An interrupt raised inside sqlalchemy can leave a transaction open that locks the store for
    the run's own KILLED; a store write is therefore never cut half-way."""
    import os

    from kdexp.tracking.runs import signals_deferred

    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append("the write finished")
    assert done == ["the write finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
