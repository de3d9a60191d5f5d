"""Faults (issue 27, cases 3 and 11): a project folder moved or copied elsewhere keeps its stored
teachers and writes into its new place only; `kdexp-export RUN_ID` finds a run in any experiment."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import mlflow
import pytest
import torch

from conftest import FAST
from helpers import kdexp, runs_of, sqlite_uri
from kdexp import tracking
from kdexp.config.checks import ConfigError
from kdexp.tracking.relocate import follow_folder, local_artifacts

QUIET = [*FAST, "data.limit_train=300", "tracking.log_model=false", "trainer.baseline=false"]


def _locations(folder: Path) -> list[str]:
    """Every artifact location the database of `folder` records, read with sqlite alone."""
    with sqlite3.connect(folder / "mlflow.db") as connection:
        return [row[0] for row in connection.execute(
            "select artifact_location from experiments union all select artifact_uri from runs")]


def _entry_state(folder: Path, run_id: str) -> dict:
    """The state dict a store entry of `folder` holds, read from its folder under `folder/mlruns`."""
    files = list((folder / "mlruns").glob(f"*/{run_id}/artifacts/entry/model.pt"))
    assert len(files) == 1, files
    return torch.load(files[0], weights_only=True)


def _latest(folder: Path, experiment: str = "kdexp"):
    return max(runs_of(folder, experiment), key=lambda r: r.info.start_time)


def _reused_its_store(folder: Path, experiment: str = "kdexp") -> None:
    """The latest run of `folder` loaded its teacher and logits from the store, which lost nothing."""
    tags = _latest(folder, experiment).data.tags
    assert tags["kdexp.teacher.source"] == "store" and tags["kdexp.teacher.logits"] == "store", tags
    entries = runs_of(folder, f"{experiment}-store")
    assert entries and all(e.info.status == "FINISHED" for e in entries)
    assert not any("kdexp.store_lost" in e.data.tags for e in entries)


@pytest.mark.slow
def test_copied_then_moved_folders_reuse_their_teacher_write_only_there_and_export_by_run_id(tmp_path):
    original, copy, moved = tmp_path / "exp", tmp_path / "copy", tmp_path / "moved"
    original.mkdir()
    kdexp([*QUIET, "tracking.experiment=foo"], original, check=True)
    first = _latest(original, "foo")

    # cp -r exp copy: the copy reads and writes its own files; the original's store is untouched.
    shutil.copytree(original, copy)
    before = _locations(original)
    out = kdexp([*QUIET, "tracking.experiment=foo", "loss.temperature=2"], copy, check=True).stdout
    assert f"was copied from {original}" in out and "unusable" not in out, out
    _reused_its_store(copy, "foo")
    assert all(location.startswith(str(copy / "mlruns")) for location in _locations(copy))
    assert _locations(original) == before

    # mv exp moved: the stored teacher is a hit, nothing FAILED, the old path is not re-created.
    original.rename(moved)
    out = kdexp([*QUIET, "tracking.experiment=foo", "loss.temperature=8"], moved, check=True).stdout
    assert f"was moved from {original}" in out and "unusable" not in out, out
    _reused_its_store(moved, "foo")
    assert not original.exists()
    assert all(location.startswith(str(moved / "mlruns")) for location in _locations(moved))

    # Case 11: a run id names its run in any experiment (here foo), no --experiment; the teacher
    # of a run made before the move is read where the move put it.
    exported = kdexp([first.info.run_id, str(tmp_path / "t.pt")], moved, module="kdexp.cli.export")
    assert exported.returncode == 0, exported.stderr
    entry = first.data.tags["kdexp.teacher.lineage"]
    assert f"store entry {entry}" in exported.stdout
    written, stored = torch.load(tmp_path / "t.pt", weights_only=True), _entry_state(moved, entry)
    assert written.keys() == stored.keys() and all(torch.equal(written[k], stored[k]) for k in stored)


# --- without training: the mapping itself, on a store made by MLflow ---


def _store_with_a_run(folder: Path, monkeypatch) -> tuple[str, str]:
    """A store in `folder`, the working folder, with one run holding one artifact; (run id, its
    artifact URI)."""
    folder.mkdir()
    monkeypatch.chdir(folder)  # MLflow's default artifact root: ./mlruns
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri(folder))
    exp_id = client.create_experiment("e", artifact_location=str(folder / "mlruns" / "1"))
    run = client.create_run(exp_id)
    (folder / "a.txt").write_text("x")
    client.log_artifact(run.info.run_id, str(folder / "a.txt"))
    return run.info.run_id, client.get_run(run.info.run_id).info.artifact_uri


def test_a_moved_store_is_read_where_its_files_are_then_rewritten_once(tmp_path, monkeypatch, capsys):
    _, uri = _store_with_a_run(tmp_path / "exp", monkeypatch)
    mlflow.set_tracking_uri(sqlite_uri(tmp_path / "exp"))
    entry = tracking.save_stored("kdexp-store", "0123456789abcdef01234567", {}, "teacher", {"w": torch.ones(2)}, {})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp").rename(tmp_path / "exp2")
    db = tmp_path / "exp2" / "mlflow.db"
    assert local_artifacts(uri, db) == tmp_path / "exp2" / Path(uri).relative_to(tmp_path / "exp")
    assert local_artifacts(uri, None) is None  # no database to resolve against: gone

    # The model store reads the database as it is (say, one kdexp could not rewrite): the entry's
    # files exist beside it, so it is found there, and not given up.
    mlflow.set_tracking_uri(sqlite_uri(tmp_path / "exp2"))
    lost = []
    found = tracking.find_stored("kdexp-store", "0123456789abcdef01234567", lambda *args: lost.append(args))
    assert found is not None and found[0] == entry and torch.equal(found[1]["w"], torch.ones(2)) and not lost
    assert mlflow.get_run(entry).info.status == "FINISHED"
    assert all(location.startswith(str(tmp_path / "exp" / "mlruns")) for location in _locations(tmp_path / "exp2"))

    # Opening the store rewrites the locations once, in one line; a second opening finds nothing to do.
    capsys.readouterr()
    follow_folder(db)
    follow_folder(db)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and f"was moved from {tmp_path / 'exp'}" in lines[0] and "its 2 runs" in lines[0], lines
    assert all(location.startswith(str(tmp_path / "exp2" / "mlruns")) for location in _locations(tmp_path / "exp2"))
    assert mlflow.MlflowClient().list_artifacts(entry, "entry")  # MLflow itself reads them now


def test_artifacts_kept_elsewhere_on_purpose_are_left_where_they_are(tmp_path, monkeypatch):
    run_id, uri = _store_with_a_run(tmp_path / "exp", monkeypatch)
    (tmp_path / "exp" / "mlflow.db").rename(tmp_path / "db.sqlite")  # the database alone moved away
    (tmp_path / "mlruns").mkdir()  # ... beside an mlruns/ of its own, which holds none of its runs
    follow_folder(tmp_path / "db.sqlite")
    with sqlite3.connect(tmp_path / "db.sqlite") as connection:
        assert connection.execute("select artifact_uri from runs").fetchone()[0] == uri
    assert local_artifacts(uri, tmp_path / "db.sqlite") == Path(uri)


def test_a_store_key_is_found_in_any_experiment_and_a_missing_one_says_where_it_looked(store, tmp_path):
    mlflow.set_tracking_uri(store)
    tracking.save_stored("foo-store", "0123456789abcdef01234567", {"model": {"name": "x"}}, "teacher",
                         {"w": torch.ones(2)}, {"acc": [0.5]})
    state, what = tracking.exported_state("0123456789abcdef01234567", "teacher", tracking_uri=store)
    assert torch.equal(state["w"], torch.ones(2)) and "key 0123456789abcdef01234567" in what
    with pytest.raises(ConfigError, match="no usable entry in experiment 'bar-store'"):
        tracking.exported_state("0123456789abcdef01234567", "teacher", "bar", store)
