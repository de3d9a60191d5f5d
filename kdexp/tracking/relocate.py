"""A local store that follows its folder: `mv exp exp2` or `cp -r exp exp2`, then kdexp in `exp2`.

MLflow writes absolute artifact locations into the database when it creates an experiment
(`<working folder>/mlruns/<experiment id>`) and a run (`.../<run id>/artifacts`), and derives a new
run's location from its experiment's; MLflow 3.17 makes a relative `./mlruns` absolute before it
stores it (`resolve_uri_if_local`), so no setting keeps them relative. A moved folder thus reads its
artifacts at the old path (gone: every stored teacher looked lost) and writes new ones there (the
old folder re-created), and a copied folder writes into the original's `mlruns/`.

kdexp keeps the store and its artifacts together, `mlruns/` beside the database, so a stored root
`<old>/mlruns` that is not the one beside the database is mapped to it, in the database itself
(every reader, `mlflow ui` included, then finds the files), when the database has evidently moved:
- moved: `<old>/mlruns` no longer exists and `mlruns/` beside the database does;
- copied: `<old>/mlruns` exists beside another database file of the same name, and a run folder
  of this database is found under `mlruns/` beside it (the copy's own files).
Anything else (artifacts deliberately kept elsewhere, a server) is left as it is. The rewrite is
one transaction, under the store's creation lock, and says so in one line. `local_artifacts`
reads through the same mapping without writing, for a database that cannot be written.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = "mlruns"  # MLflow's default artifact root, beside the database in kdexp's layout

# Every column holding an artifact location (a column a schema lacks is skipped).
_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"),
            ("model_versions", "storage_location"), ("model_versions", "source"))
_TRACE_TAG = "mlflow.artifactLocation"  # a trace's artifact folder, stored as a tag


def _local_path(location: str) -> Path | None:
    """The local path of an artifact location (a plain path or a file: URI), else None."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and location.startswith("/"):
        return Path(location)
    return None


def _same(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _stored_roots(connection: sqlite3.Connection) -> dict[str, Path]:
    """The artifact roots the experiments were created under, as stored (`<root>/<experiment id>`):
    {the stored prefix: its path}, only roots named `mlruns` (MLflow's default)."""
    roots = {}
    for exp_id, location in connection.execute("select experiment_id, artifact_location from experiments"):
        path = _local_path(location or "")
        if path is None or path.name != str(exp_id) or path.parent.name != ROOT:
            continue
        prefix = location[:len(location) - len(str(exp_id)) - 1].rstrip("/")
        roots[prefix] = path.parent
    return roots


def _run_folders(connection: sqlite3.Connection, prefix: str) -> list[str]:
    """Run folders under a stored root, relative to it (`<experiment id>/<run id>`)."""
    rows = connection.execute("select artifact_uri from runs where substr(artifact_uri, 1, ?) = ?",
                              (len(prefix) + 1, prefix + "/"))
    return [str(Path(uri[len(prefix) + 1:]).parent) for (uri,) in rows if uri]


def _has_moved(connection: sqlite3.Connection, db: Path, prefix: str, old: Path, here: Path) -> bool:
    if _same(old, here) or not here.is_dir():
        return False
    if not old.exists():
        return True  # moved: the old folder is gone, the files are beside the database
    other = old.parent / db.name
    if not other.is_file() or os.path.samefile(other, db):
        return False  # artifacts deliberately kept elsewhere: not this database's own folder
    return any((here / folder).is_dir() for folder in _run_folders(connection, prefix))  # copied


def _moved_roots(connection: sqlite3.Connection, db: Path, here: Path) -> dict[str, Path]:
    """{stored prefix: old root} of every root this database has evidently been moved away from."""
    return {p: old for p, old in _stored_roots(connection).items() if _has_moved(connection, db, p, old, here)}


def _columns(connection: sqlite3.Connection) -> list[tuple[str, str]]:
    present = []
    for table, column in _COLUMNS:
        names = {row[1] for row in connection.execute(f"pragma table_info({table})")}
        if column in names:
            present.append((table, column))
    return present


def _rewrite(connection: sqlite3.Connection, prefix: str, new: str) -> int:
    """Replace the stored prefix `prefix` by `new` in every location column; returns the runs moved."""
    moved_runs = 0
    match = "substr({c}, 1, ?) = ? or {c} = ?"
    args = (len(prefix) + 1, prefix + "/", prefix)
    for table, column in _columns(connection):
        cursor = connection.execute(
            f"update {table} set {column} = ? || substr({column}, ?) where {match.format(c=column)}",
            (new, len(prefix) + 1, *args))
        moved_runs += cursor.rowcount if table == "runs" else 0
    if connection.execute("select 1 from sqlite_master where type='table' and name='trace_tags'").fetchone():
        connection.execute(f"update trace_tags set value = ? || substr(value, ?) where key = ? and "
                           f"({match.format(c='value')})", (new, len(prefix) + 1, _TRACE_TAG, *args))
    return moved_runs


def follow_folder(db: Path) -> None:
    """Point the artifact locations of the sqlite store `db` at `mlruns/` beside it when the
    folder was moved or copied (see the module docstring); one line per old root. A database
    that cannot be read or written is left as it is: the caller's own opening reports it."""
    db = db.absolute()
    here = db.parent / ROOT
    if not db.is_file() or not here.is_dir():
        return
    try:
        connection = sqlite3.connect(str(db), timeout=30, isolation_level=None)
    except sqlite3.Error:
        return
    try:
        if not connection.execute("select 1 from sqlite_master where type='table' and name='experiments'").fetchone():
            return
        if not _moved_roots(connection, db, here):
            return  # the usual case, decided without taking the write lock
        connection.execute("begin immediate")
        try:
            moved = _moved_roots(connection, db, here)  # again under the lock: another process may have done it
            counts = {prefix: _rewrite(connection, prefix, _same_form(prefix, here)) for prefix in moved}
            connection.execute("commit")
        except BaseException:
            connection.execute("rollback")
            raise
    except sqlite3.Error:
        return
    finally:
        connection.close()
    for prefix, old in moved.items():
        how = "moved" if not old.exists() else "copied"
        print(f"kdexp: this MLflow store was {how} from {old.parent}: the artifact locations of its "
              f"{counts[prefix]} runs now point at {here} (rewritten in {db.name})", flush=True)


def _same_form(prefix: str, here: Path) -> str:
    """`here` written the way the stored prefix was: a plain path or a file: URI."""
    return here.as_uri() if prefix.startswith("file:") else str(here)


def local_artifacts(artifact_uri: str, db: Path | None) -> Path | None:
    """The existing local folder of a run's artifacts: where the database says, else the same
    place under `mlruns/` beside the database `db` (a moved folder whose database could not be
    rewritten); None when neither exists or the location is not local."""
    path = _local_path(artifact_uri or "")
    if path is None:
        return None
    if path.exists():
        return path
    parts = path.parts
    if db is None or ROOT not in parts:
        return None
    at = len(parts) - 1 - parts[::-1].index(ROOT)
    mapped = db.absolute().parent / ROOT / Path(*parts[at + 1:]) if at + 1 < len(parts) else None
    return mapped if mapped is not None and mapped.exists() else None
