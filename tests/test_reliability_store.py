"""Faults (issue 27, cases 2, 8 and 9): the local MLflow store (sqlite) when it is half-made, read-only
or damaged. Each ends in one line, and nothing the user had is changed (kdexp/tracking/store_file.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from conftest import FAST
from helpers import kdexp, kdexp_env, runs_of, sqlite_uri
from kdexp import tracking

QUIET = [*FAST, "data.limit_train=300", "tracking.log_model=false", "trainer.baseline=false"]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A complete, empty store, made once (MLflow's migrations take seconds): tests copy it."""
    db = tmp_path_factory.mktemp("made") / "mlflow.db"
    previous = os.getcwd()
    os.chdir(db.parent)  # its artifact root, ./mlruns, is resolved here: not in the repository
    try:
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments(max_results=1)
    finally:
        os.chdir(previous)
    return db


def _store_with_a_run(made: Path, folder: Path) -> Path:
    """`folder/mlflow.db`, a store holding one finished run (made without training)."""
    db = folder / "mlflow.db"
    shutil.copyfile(made, db)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    client.set_terminated(client.create_run("0").info.run_id)
    return db


def _one_error_line(result: subprocess.CompletedProcess, program: str = "kdexp") -> str:
    """The only line a refused command printed (exit 2), which it must have printed."""
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert lines[0].startswith(f"{program}: error: ")
    return lines[0]


# --- case 2: the first command in a folder stopped while it creates the store ---------------------


def _store_files(folder: Path) -> list[Path]:
    """mlflow.db, or the temporary file a new store is created under, once either is there."""
    return [p for p in folder.iterdir() if "mlflow.db" in p.name and not p.name.endswith(".lock")]


def _mid_migration(db: Path) -> bool:
    """Whether MLflow is inside one of its batch migrations of `db` (alembic's `_alembic_tmp_<table>`
    is there, committed: a kill now left a store every later command failed on), read without
    disturbing the writer."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)) as connection:
            return bool(connection.execute("select 1 from sqlite_master where name like '_alembic_tmp%'").fetchall())
    except sqlite3.Error:  # not yet there, locked for a moment, or renamed meanwhile
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig, delay", [(signal.SIGKILL, 0.2), (signal.SIGKILL, "mid-migration"), (signal.SIGINT, 0.0)])
def test_the_first_store_creation_stopped_at_any_point_then_the_same_command_finishes(tmp_path, sig, delay):
    """kill -9 of the command and of the child creating its store (a session of its own: the kill
    reaches both, as a power cut does) at several points of MLflow's migrations, or Ctrl-C: the
    same command then creates the store and trains; Ctrl-C does not claim a run was marked KILLED."""
    victim = subprocess.Popen([sys.executable, "-m", "kdexp", *QUIET], cwd=tmp_path, text=True,
                              env=kdexp_env(tmp_path, {"PYTHONUNBUFFERED": "1"}), start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not _store_files(tmp_path):
        assert victim.poll() is None, victim.stdout.read()
        assert time.time() < deadline, "no store file in time"
        time.sleep(0.01)
    if delay == "mid-migration":
        while not any(_mid_migration(p) for p in _store_files(tmp_path)):
            assert victim.poll() is None and time.time() < deadline, "no migration seen"
            time.sleep(0.01)
    else:
        time.sleep(delay)
    if sig == signal.SIGKILL:
        os.killpg(victim.pid, signal.SIGKILL)
    else:
        victim.send_signal(sig)
    out = victim.communicate(timeout=120)[0]
    if sig == signal.SIGINT:
        assert victim.returncode == 130, out
        assert "marked KILLED" not in out and "before any MLflow run was started" in out.strip().splitlines()[-1], out
    rerun = kdexp(QUIET, tmp_path)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    [run] = runs_of(tmp_path)
    assert run.info.status == "FINISHED" and "student_acc" in run.data.metrics
    assert [p.name for p in _store_files(tmp_path)] == ["mlflow.db"]  # no temporary file left


def _half_made(made: Path, db: Path, runs: int = 0) -> None:
    """What a first command killed in the middle of MLflow's migrations left as `db` when stores
    were created in place: tables of a later schema than the version alembic recorded, one later
    table missing. MLflow then migrates again and fails on every later command ("table
    experiment_tags already exists"). With `runs`, that many runs in it."""
    shutil.copyfile(made, db)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    for _ in range(runs):
        client.create_run("0")
    with sqlite3.connect(db) as connection:
        connection.execute("update alembic_version set version_num = '451aebb31d03'")  # MLflow's first migration
        connection.execute("drop table webhooks")


def test_what_a_creation_killed_half_way_left_is_cleared_and_the_store_created(made, tmp_path, capsys):
    """Today's creation leaves only its temporary file, which the next one removes; an earlier
    kdexp's half-made mlflow.db (it holds nothing) is moved aside, unchanged, and created again."""
    partial = tmp_path / ".mlflow.db.new-99999"
    shutil.copyfile(made, partial)
    Path(f"{partial}-journal").write_bytes(b"\0" * 512)
    db = tmp_path / "mlflow.db"
    _half_made(made, db)
    before = db.read_bytes()
    tracking.prepare(sqlite_uri(tmp_path), "kdexp")
    [aside] = tmp_path.glob("mlflow.db.half-made-*")
    assert aside.read_bytes() == before  # moved, never deleted, never opened by MLflow
    assert "was half-made" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".mlflow.db.lock", aside.name, "mlflow.db"])
    client = mlflow.MlflowClient()
    client.set_terminated(client.create_run(client.get_experiment_by_name("kdexp").experiment_id).info.run_id)
    assert len(runs_of()) == 1


def test_a_store_that_holds_a_run_is_never_taken_for_half_made(made, tmp_path):
    from kdexp.tracking.store_file import half_made

    empty, one_run = tmp_path / "empty.db", tmp_path / "one_run.db"
    _half_made(made, empty)
    _half_made(made, one_run, runs=1)
    assert half_made(empty) and not half_made(one_run) and not half_made(made)


# --- case 8: a read-only mlflow.db ---------------------------------------------------------------


@contextlib.contextmanager
def _read_only(db: Path):
    """`db` read-only as sqlite sees it: `chmod 444` for a user, `chattr +i` for root (root
    writes through the mode bits), as a read-only bind mount of the file is."""
    if os.geteuid() != 0:
        db.chmod(0o444)
        try:
            yield
        finally:
            db.chmod(0o644)
        return
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("root without chattr +i here (CAP_LINUX_IMMUTABLE, or a file system without it)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)


@pytest.mark.slow
def test_a_read_only_store_is_one_line_before_any_training_and_left_untouched(made, tmp_path):
    db = _store_with_a_run(made, tmp_path)
    before = db.read_bytes()
    with _read_only(db):
        line = _one_error_line(kdexp(QUIET, tmp_path))
    assert f"{db} is read-only" in line and "make it writable" in line and "left untouched" in line
    assert db.read_bytes() == before
    assert not list(tmp_path.glob("outputs/checkpoints/*/*/*.pt"))  # refused before any training


# --- case 9: a damaged page inside mlflow.db -----------------------------------------------------


def _damage(db: Path, table: str = "experiments") -> None:
    """Overwrite the root page of `table`, inside the file (not at its end, not truncated)."""
    with sqlite3.connect(db) as connection:
        page_size = connection.execute("pragma page_size").fetchone()[0]
        root = connection.execute("select rootpage from sqlite_master where name = ?", (table,)).fetchone()[0]
    assert 1 < root < db.stat().st_size // page_size
    with open(db, "r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(b"\xde\xad\xbe\xef" * (page_size // 4))


@pytest.mark.slow
def test_a_damaged_store_is_one_line_for_kdexp_report_and_export_and_left_untouched(made, tmp_path):
    db = _store_with_a_run(made, tmp_path)
    _damage(db)
    before = db.read_bytes()
    lines = [_one_error_line(kdexp(QUIET, tmp_path)),
             _one_error_line(kdexp([], tmp_path, module="kdexp.report"), "kdexp-report"),
             _one_error_line(kdexp(["0" * 32, "out.pt"], tmp_path, module="kdexp.cli.export"), "kdexp-export")]
    for line in lines:
        assert f"{db} is damaged (database disk image is malformed" in line, line
        assert "restore it from a backup or move it aside" in line and "left it untouched" in line
    assert db.read_bytes() == before
    assert not list(tmp_path.glob("outputs/checkpoints/*/*/*.pt"))


def test_damage_met_later_by_mlflow_is_the_same_line(made, tmp_path):
    """A store larger than the check's time, or damaged while a run goes on: what MLflow meets
    (sqlite's error inside sqlalchemy's) names the file the same way."""
    import sqlalchemy

    from kdexp.tracking.store_file import damage

    db = tmp_path / "mlflow.db"
    shutil.copyfile(made, db)
    _damage(db, "runs")
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    with pytest.raises(sqlalchemy.exc.DatabaseError) as err, engine.connect() as connection:
        connection.execute(sqlalchemy.text("select * from runs")).fetchall()
    engine.dispose()
    line = damage(err.value, db)
    assert line is not None and f"{db} is damaged" in line and "\n" not in line
    assert damage(ValueError("x"), db) is None
