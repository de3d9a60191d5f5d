"""A new local store is created by a child process while the run starts (kdexp/tracking/create.py)."""

from __future__ import annotations

import sqlite3
import sys

from kdexp import tracking
from kdexp.tracking import connect, create
from kdexp.tracking.ui import KIND_TAG, TRAINING_KIND


def experiments_in(db) -> dict[str, str]:
    """name → kind tag of every experiment in the sqlite file, read without MLflow."""
    with sqlite3.connect(db) as con:
        rows = con.execute("select e.name, t.value from experiments e left join experiment_tags t "
                           f"on t.experiment_id = e.experiment_id and t.key = '{KIND_TAG}'").fetchall()
    return dict(rows)


def test_the_child_creates_the_store_when_the_run_needs_it(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    create.start(uri, ["kdexp", "kdexp-store"])
    child = connect.CREATING[str(tmp_path / "mlflow.db")]
    tracking.prepare(uri, "kdexp")
    assert child.returncode == 0 and not connect.CREATING
    # The model store's experiment exists too: only the child was asked for it.
    assert experiments_in(tmp_path / "mlflow.db") == {"Default": None, "kdexp": TRAINING_KIND,
                                                        "kdexp-store": TRAINING_KIND}
    assert capsys.readouterr().out.count("kdexp: new MLflow store:") == 1  # still said once, by the run


def test_a_command_that_stops_before_needing_the_store_leaves_none(tmp_path):
    """A bad setting or missing data ends the command before `prepare`: the child is never told to
    write, and ends when its input does (as when the command's process ends)."""
    create.start(f"sqlite:///{tmp_path / 'mlflow.db'}", ["kdexp"])
    child = connect.CREATING.pop(str(tmp_path / "mlflow.db"))
    child.stdin.close()
    assert child.wait(timeout=120) == 0
    assert list(tmp_path.iterdir()) == []


def test_a_failed_child_leaves_the_creation_to_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "executable", "false")  # a child that exits 1 at once
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    create.start(uri, ["kdexp"])
    tracking.prepare(uri, "kdexp")
    assert experiments_in(tmp_path / "mlflow.db")["kdexp"] == TRAINING_KIND
    assert capsys.readouterr().out.count("kdexp: new MLflow store:") == 1


def test_no_child_for_an_existing_store_or_a_server(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.prepare(uri, "kdexp")
    create.start(uri, ["kdexp"])
    create.start("http://127.0.0.1:5999", ["kdexp"])
    assert not connect.CREATING
