"""A local sqlite store's file: created whole, and looked at before MLflow touches it.

Created whole: `create_store` migrates a new store under a temporary name beside it and renames it
into place, so a first command killed during MLflow's migrations leaves no half-made `mlflow.db`
(every later command used to fail on it with "table ... already exists"); a half-made store left by
an earlier kdexp holds nothing and is moved aside and created again (`recreate_half_made`).

Looked at: MLflow meets a bad file deep inside sqlalchemy, and the user gets a traceback of a few
hundred lines. Each case here is one line naming the file and the way out, and the file is left as
it was (nothing written, not even a journal, except the rollback of a hot journal, below):
- not sqlite, or sqlite of another program (MLflow would add its tables to it);
- damaged: a page overwritten (a disk error, a copy cut short, a tool that wrote into it); sqlite's
  own `quick_check` finds it, for up to `CHECK_SECONDS` (~1 s per 250 MB): a larger store is
  checked as far as that goes, and `damage` turns what MLflow meets later into the same line;
- read-only (a read-only bind mount of the file, `chmod 444` for another user, `chattr +i`): kdexp
  writes every run there, so a command that would train refuses it; `kdexp-report` reads it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from kdexp.config.checks import ConfigError

CHECK_SECONDS = 2.0  # the longest the damage check may take (a 480 MB store: ~1.9 s on one core)
_DAMAGE = ("malformed", "file is not a database")  # sqlite's words for a bad file


def check_store_file(uri: str, db: Path) -> None:
    """Refuse, in one line, an existing file `db` (of `uri`) that is no MLflow store, or a damaged one."""
    if not db.is_file() or db.stat().st_size == 0:
        return
    with open(db, "rb") as handle:
        if handle.read(16) != b"SQLite format 3\x00":
            raise ConfigError(f"tracking.uri={uri}: {db.absolute()} is not an sqlite database (left untouched)")
    tables = table_names(db)
    if tables and not {"experiments", "alembic_version"} & set(tables):
        raise ConfigError(f"tracking.uri={uri}: {db.absolute()} is an sqlite database but not an MLflow store "
                          f"(tables: {', '.join(tables[:5])}{', ...' if len(tables) > 5 else ''}); left untouched: "
                          f"point tracking.uri at another file")


def check_writable_file(uri: str, db: Path) -> None:
    """Refuse a database file this process cannot open for writing (opened and closed again: nothing
    is written, not even its time stamps). Root writes a `chmod 444` file, and sqlite does too."""
    if not db.is_file():
        return
    try:
        os.close(os.open(db, os.O_RDWR))
    except OSError as err:
        raise ConfigError(f"tracking.uri={uri}: {db.absolute()} is read-only ({err.strerror}): kdexp records every "
                          f"run there; make it writable (chmod u+w, or mount it read-write) or point tracking.uri "
                          f"(MLFLOW_TRACKING_URI) at a writable copy; left untouched") from None


def damage(err: BaseException, db: Path | None) -> str | None:
    """The one line for an error MLflow met in a damaged database `db` (anywhere in the chain of
    causes: sqlalchemy and MLflow wrap sqlite's own), else None."""
    while err is not None and db is not None:
        if isinstance(err, sqlite3.DatabaseError) and any(word in str(err).lower() for word in _DAMAGE):
            return _damaged(db, err)
        err = err.__cause__ or err.__context__
    return None


def half_made(db: Path) -> bool:
    """Whether `db` is a store whose first creation stopped in the middle of MLflow's migrations
    (in place, as before `create_store`): it holds nothing (no run, no experiment beyond MLflow's
    Default, no registered model) and lacks tables MLflow expects, or holds alembic's temporary
    ones, so that MLflow would migrate it again and fail ("table ... already exists"). An older
    MLflow's store that holds anything is MLflow's to upgrade, as it always was."""
    from mlflow.store.tracking.dbmodels.models import Base  # the tables MLflow checks for on opening

    try:
        connection = sqlite3.connect(f"file:{db.absolute()}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        names = {row[0] for row in connection.execute("select name from sqlite_master where type='table'")}
        counts = {table: connection.execute(f"select count(*) from {table}").fetchone()[0]
                  for table in ("runs", "registered_models", "experiments") if table in names}
    except sqlite3.Error:
        return False
    finally:
        connection.close()
    empty = counts.get("runs", 0) == 0 and counts.get("registered_models", 0) == 0 and counts.get("experiments", 0) <= 1
    return empty and (not set(Base.metadata.tables) <= names or any(n.startswith("_alembic_tmp") for n in names))


def table_names(db: Path) -> list[str]:
    """Table names of an sqlite file, opened read-only (nothing is written, not even a journal),
    after sqlite's quick check of every page.

    A process killed in the middle of a transaction (kill -9 during a metric write) leaves a hot
    journal beside the database, which sqlite rolls back on the next connection that may write;
    a read-only one cannot, and fails with "attempt to write a readonly database". Then the probe
    opens it read-write once, which rolls back the unfinished transaction (the database is left as
    it was at its last commit, what any MLflow process would do next) and writes nothing else."""
    try:
        return _read_tables(db, "ro")
    except sqlite3.OperationalError as err:
        if "readonly" not in str(err) or not Path(f"{db}-journal").exists():
            raise _unreadable(db, err) from None
    try:
        return _read_tables(db, "rw")
    except sqlite3.DatabaseError as err:
        raise _unreadable(db, err) from None


def _read_tables(db: Path, mode: str) -> list[str]:
    connection = sqlite3.connect(f"file:{db.absolute()}?mode={mode}", uri=True)
    try:
        tables = sorted(row[0] for row in connection.execute("select name from sqlite_master where type='table'"))
        _quick_check(connection)
        return tables
    except sqlite3.OperationalError as err:
        if any(word in str(err).lower() for word in _DAMAGE):
            raise _unreadable(db, err) from None
        raise
    except sqlite3.DatabaseError as err:
        raise _unreadable(db, err) from None
    finally:
        connection.close()


def _quick_check(connection: sqlite3.Connection) -> None:
    """sqlite's check of every page's structure, stopped after `CHECK_SECONDS`: a damaged page
    raises, a store too large to check in that time passes (`damage` covers what MLflow meets)."""
    deadline = time.monotonic() + CHECK_SECONDS
    connection.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
    try:
        problem = connection.execute("pragma quick_check(1)").fetchone()[0]
    except sqlite3.OperationalError as err:
        if "interrupt" in str(err).lower():
            return
        raise
    finally:
        connection.set_progress_handler(None, 0)
    if problem != "ok":
        raise sqlite3.DatabaseError(f"database disk image is malformed: {' '.join(problem.split())[:200]}")


def _unreadable(db: Path, err: Exception) -> ConfigError:
    if any(word in str(err).lower() for word in _DAMAGE):
        return ConfigError(_damaged(db, err))
    return ConfigError(f"tracking.uri=sqlite:///{db}: {db.absolute()} cannot be read as sqlite ({err}); "
                       f"left untouched")


def _damaged(db: Path, err: BaseException) -> str:
    cause = " ".join(str(err).split("\n")[0].split()).removeprefix("(sqlite3.DatabaseError) ")[:200]
    return (f"tracking.uri=sqlite:///{db}: {db.absolute()} is damaged ({cause}): restore it from a backup or "
            f"move it aside (kdexp then starts a new store there); kdexp left it untouched")


def absent(db: Path) -> bool:
    """No store there yet: no file, or an empty one (not an empty file beside a write-ahead log,
    which may hold a whole database)."""
    return not db.is_file() or (db.stat().st_size == 0 and not Path(f"{db}-wal").exists())


def create_store(db: Path) -> None:
    """Create and migrate a new store under a temporary name beside `db`, then rename it into place:
    killed or interrupted half-way (the first command in a folder, MLflow's ~100 migrations), the
    creation leaves no half-made `db` that every later command fails on, only the temporary file,
    which the next creator removes. Under the creation lock (no other creator runs)."""
    import mlflow

    folder = db.absolute().parent
    for leftover in folder.glob(f".{db.name}.new-*"):  # of a creator killed half-way: a store never used
        leftover.unlink(missing_ok=True)
    partial = folder / f".{db.name}.new-{os.getpid()}"
    try:
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{partial}").search_experiments(max_results=1)
    except BaseException:  # failed (a full disk) or interrupted: the next try starts clean
        _forget_engines(partial)
        for leftover in (partial, Path(f"{partial}-journal")):
            leftover.unlink(missing_ok=True)
        raise
    _forget_engines(partial)  # before the rename: a cached connection would go on using the old name
    for stale in (Path(f"{db}-journal"), Path(f"{db}-shm")):  # beside an empty `db` only: nothing to roll back
        stale.unlink(missing_ok=True)
    os.replace(partial, db)


def _forget_engines(db: Path) -> None:
    """Close MLflow's cached database engines of `db` (SqlAlchemyStore keeps one per URI, its
    connections open on the file they opened, whatever is at that path later: sqlite then refuses
    every write, "attempt to write a readonly database")."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engines = getattr(SqlAlchemyStore, "_engine_map", {})
    for uri in [u for u in engines if u.startswith("sqlite:///")]:
        if Path(uri.removeprefix("sqlite:///").split("?")[0]).absolute() == db.absolute():
            engines.pop(uri).dispose()


def recreate_half_made(db: Path) -> None:
    """Move a `half_made` store aside (never deleted, never opened by MLflow, which would change
    it) and create a new one in its place."""
    aside = db.with_name(f"{db.name}.half-made-{time.strftime('%Y%m%d-%H%M%S')}")
    _forget_engines(db)
    os.replace(db, aside)
    create_store(db)
    print(f"kdexp: {db.absolute()} was half-made (its first creation was interrupted) and held no run: "
          f"moved to {aside.name}, a new store created", flush=True)
