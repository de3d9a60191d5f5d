"""A new local store, created by a child process while the run that needs it is still starting.

Creating a sqlite store means importing MLflow's database layer (~1.5 s) and running its schema
migrations (~0.6 s), and a new store's first run used to wait for both before training. Its first
seconds (importing torch, reading the data) run on one core and leave the other idle, so `start`
hands the creation to a child process there. The child imports MLflow at once but writes nothing
until `connect.open_tracking_store` tells it to (`GO_AHEAD`), when the run needs its store: it then migrates
the new database while the run imports MLflow itself, and a command refused in one line before
that (a bad setting, missing data) leaves no store behind, the child reading the end of its input
and stopping. `open_tracking_store` waits for the child and, should it have failed, creates the store
itself, with the usual one-line errors. The child takes the creation lock like any creator, so a
second kdexp started in the same folder meanwhile waits for it.

Only while starting: on a 2-core machine any busy process beside PyTorch's threads slows training
several times (they wait on each other), so nothing runs beside training itself.
"""

from __future__ import annotations

import subprocess
import sys

from kdexp.tracking.connect import CREATING, GO_AHEAD, experiment_id, open_tracking_store, resolve_uri, sqlite_path


def start(uri: str | None, experiments: list[str]) -> None:
    """Start a child process that will create the local sqlite store behind `uri` (and
    `experiments` in it) when `connect.open_tracking_store` needs it, unless the store exists already or is
    not a local sqlite file."""
    uri = resolve_uri(uri)
    db = sqlite_path(uri)
    if db is None or db.exists() or str(db.absolute()) in CREATING:
        return
    CREATING[str(db.absolute())] = subprocess.Popen(
        [sys.executable, "-m", "kdexp.tracking.create", uri, *experiments],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(uri: str, experiments: list[str]) -> None:
    import mlflow
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (the slow part, before any file is written)

    if sys.stdin.buffer.readline() != GO_AHEAD:
        return  # the command stopped before it needed a store
    open_tracking_store(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    for name in experiments:
        experiment_id(client, name)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
