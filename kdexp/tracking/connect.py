"""Opening the MLflow store: which store, whether it can work, creating it once, paging through it.

Store: `tracking.uri`, else `MLFLOW_TRACKING_URI`, else MLflow's own default `sqlite:///mlflow.db`
in the working folder, with artifacts under `./mlruns`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
from pathlib import Path
from typing import Callable, Iterator

from kdexp.config.checks import ConfigError
from kdexp.config.paths import unwritable
from kdexp.tracking.store_file import (absent, check_store_file, check_writable_file, create_store, damage,
                                       half_made, recreate_half_made)
from kdexp.tracking.store_file import table_names as _tables  # noqa: F401  (tests read it here)
from kdexp.tracking.outage import name_server
from kdexp.tracking.secrets import redact, redact_uri
from kdexp.tracking.relocate import follow_folder
from kdexp.tracking.ui import KIND_TAG, TRAINING_KIND, TRAINING_VIEW, adapt_note, mark_training, ui_base

DEFAULT_URI = "sqlite:///mlflow.db"
PAGE = 1000  # runs per search request

# MLflow's first use of a sqlite store runs alembic migrations that log a page of INFO lines.
# Creating an experiment logs an INFO line too; kdexp's own output says where the run is.
for _name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# Loading a store entry would draw a progress bar per download between kdexp's own lines, which
# already say what was loaded; set the variable to true to see them.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# On a server MLflow prints "View run … at: <tracking URI>/…" for every run it ends, the URI as
# given: with `https://user:password@host` that is the password on the console (and in job logs).
# kdexp prints its own links, without credentials (kdexp/tracking/secrets.py).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the `kdexp` package


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the repository kdexp itself runs from (a source checkout, `pip install -e`),
    not of the working folder: an experiment folder is usually no repository, or another one.
    None for an installed wheel (its folder is no repository root)."""
    try:
        out = subprocess.run(["git", "-C", str(_PACKAGE_ROOT), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != _PACKAGE_ROOT:
        return None  # site-packages inside some other repository is not kdexp's commit
    return lines[1]


def sqlite_path(uri: str) -> Path | None:
    """The database file of a local sqlite URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?")[0]
    return None if path in ("", ":memory:") else Path(path)


def check_local_store(uri: str) -> None:
    """Refuse, in one line, a local sqlite store that cannot work: its folder or the artifact
    folder (./mlruns) unwritable, a database file that is read-only, damaged, not sqlite, or an
    sqlite database of something else (kdexp/tracking/store_file.py). Such a file is never touched."""
    db = sqlite_path(uri)
    if db is None:
        return
    for folder in (db.parent, Path("mlruns")):
        reason = unwritable(folder.absolute())
        if reason:
            raise ConfigError(f"tracking.uri={uri}: cannot write there: {reason}")
    check_writable_file(uri, db)  # first: a read-only file with a hot journal is read-only, not unreadable
    check_store_file(uri, db)


@contextlib.contextmanager
def creation_lock(uri: str) -> Iterator[None]:
    """Serialise the first contact with a local sqlite store across processes: MLflow creates and
    migrates a new database then, and two processes doing it at once break each other (alembic's
    "table experiments already exists", "duplicate column"). A server migrates its own store."""
    from filelock import FileLock

    db = sqlite_path(uri)
    if db is None:
        yield
        return
    with FileLock(str(db.absolute().parent / f".{db.name}.lock")):
        yield


_READY: set[str] = set()  # stores this process has opened (created, migrated) already


def store_opened() -> bool:
    """Whether this process has opened a tracking store: before that, no run of it can exist (an
    interrupt then must not say that a run was marked KILLED)."""
    return bool(_READY)

# New local stores a child process is creating for this one (kdexp/tracking/create.py), by path;
# each child writes nothing until it reads GO_AHEAD.
CREATING: dict[str, subprocess.Popen] = {}
GO_AHEAD = b"create\n"


REACH_TIMEOUT_S = 5.0


def check_reachable(uri: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """A tracking server that does not answer is refused in one line within `timeout` seconds,
    before any work: MLflow's own client retries for minutes before it gives up. Any HTTP answer
    (even 401 or 404) means a server is there; what it says is MLflow's to handle."""
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    shown = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()
    try:
        urllib.request.urlopen(f"{shown.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(f"tracking.uri={shown}: no MLflow server answers there within {timeout:g} s ({reason}); "
                          f"start it (mlflow server --host 127.0.0.1 --port {parts.port or 5000}) or point "
                          f"tracking.uri / MLFLOW_TRACKING_URI at a running one") from None


CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
_WRITABLE: set[tuple[str, str]] = set()  # (uri, experiment id) this process may write to


def _user(uri: str) -> str | None:
    """Who the requests go out as: MLFLOW_TRACKING_USERNAME, else the user in the URI."""
    import urllib.parse

    return os.environ.get("MLFLOW_TRACKING_USERNAME") or urllib.parse.urlsplit(uri).username


def access_problem(err: Exception, uri: str, experiment: str | None = None) -> str | None:
    """One line for a server's "who are you" (401) or "not you" (403), naming what to set; None
    for any other error. MLflow's basic-auth app answers UNAUTHENTICATED / PERMISSION_DENIED."""
    code = getattr(err, "error_code", None)
    shown, user = redact_uri(uri), _user(uri)
    if code == "UNAUTHENTICATED":
        if not user and not os.environ.get("MLFLOW_TRACKING_TOKEN"):
            return (f"tracking.uri={shown}: the server asks who you are (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
                    f"MLFLOW_TRACKING_PASSWORD to a user the server's admin created")
        return (f"tracking.uri={shown}: the server refused user {user!r} (HTTP 401: wrong password or no such user): "
                f"check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if code == "PERMISSION_DENIED":
        where = f"experiment {experiment!r}" if experiment else "this experiment"
        return (f"tracking.uri={shown}: user {user!r} may not write to {where} (HTTP 403: it has READ at most): "
                f"an admin grants it EDIT (get_app_client('basic-auth', tracking_uri=...).grant_user_permission("
                f"{user!r}, 'experiment', <id>, 'EDIT')), or set tracking.experiment to one of your own")
    return None


def check_writable(mlflow_client, uri: str, experiment: str, exp_id: str) -> None:
    """On a server with permissions, refuse in one line, before any training, a user who may read
    the experiment but not log to it: the probe sets the experiment's kind tag to the value it
    already has (a write that needs EDIT, as logging a run does, and changes nothing)."""
    uri = resolve_uri(uri)
    if not uri.startswith(("http://", "https://")) or (uri, exp_id) in _WRITABLE:
        return
    try:
        found = mlflow_client.get_experiment(exp_id)
        mlflow_client.set_experiment_tag(exp_id, KIND_TAG, found.tags.get(KIND_TAG, TRAINING_KIND))
    except Exception as err:
        problem = access_problem(err, uri, experiment)
        if problem:
            raise ConfigError(problem) from None
        raise
    _WRITABLE.add((uri, exp_id))


def open_tracking_store(uri: str) -> None:
    """Create and migrate the store behind `uri` once per process, under the creation lock."""
    db = sqlite_path(uri)
    where = str(db.absolute()) if db is not None else uri  # a relative path is another file elsewhere
    if where in _READY:
        return
    check_reachable(uri)
    creator = CREATING.pop(where, None)
    if creator is not None:  # the run needs its store now: the child creates it while MLflow is imported here
        try:
            creator.stdin.write(GO_AHEAD)
            creator.stdin.close()
        except OSError:  # it has died: what follows creates the store
            pass
    import mlflow

    if creator is not None:
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (~0.6 s: beside the child's migrations, not after them)

        creator.wait()  # whatever its outcome, what follows opens the store, or creates it with the usual errors
    check_local_store(uri)
    with creation_lock(uri):
        fresh = db is not None and absent(db)
        if fresh:
            create_store(db)
        elif db is not None and half_made(db):  # left by an earlier kdexp killed while creating it
            recreate_half_made(db)
        elif db is not None:  # a moved or copied project folder: artifacts follow it
            follow_folder(db)
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    if fresh or creator is not None:  # run from another folder, kdexp would otherwise start a new store there silently
        print(f"kdexp: new MLflow store: {db.absolute()}", flush=True)
    _READY.add(where)


def tracking_store_location(uri: str | None) -> str:
    """The store as a user finds it again: a local database as its absolute path, else the URI."""
    uri = resolve_uri(uri)
    db = sqlite_path(uri)
    return str(db.absolute()) if db is not None else redact_uri(uri)


def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, created if missing, tagged as a model-training experiment so
    that the UI opens it on its runs (one made by an earlier kdexp gets the tag now); a process
    that loses the race to create it picks up the winner's."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, tags={KIND_TAG: TRAINING_KIND})
        except MlflowException:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    mark_training(client, found.experiment_id, found.tags)
    return found.experiment_id


def prepare(uri: str | None, experiment: str) -> tuple[str, str]:
    """Create the store and the experiment (idempotent, safe from parallel processes); make them
    MLflow's current ones; returns (uri, experiment_id)."""
    uri = resolve_uri(uri)
    name_server(uri)
    try:
        open_tracking_store(uri)  # first: a child creating the store goes on while MLflow is imported
        import mlflow

        mlflow.set_tracking_uri(uri)
        exp_id = experiment_id(mlflow.MlflowClient(), experiment)
        check_writable(mlflow.MlflowClient(), uri, experiment, exp_id)
        mlflow.set_experiment(experiment_id=exp_id)
    except ConfigError:
        raise
    except Exception as err:  # MlflowException, sqlalchemy errors, connection errors: all one line
        if (problem := access_problem(err, uri, experiment)) is not None:
            raise ConfigError(problem) from None
        if (problem := damage(err, sqlite_path(uri))) is not None:
            raise ConfigError(problem) from None
        cause = " ".join(str(err).split())[:300]
        raise ConfigError(redact(f"tracking.uri={uri}: cannot open experiment {experiment!r} ({type(err).__name__}: {cause})")) from None
    return uri, exp_id


def client(uri: str | None = None):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=resolve_uri(uri) if uri else None)


def search_all(client, experiment_ids: list[str], filter_string: str, **kwargs) -> list:
    """Every run matching `filter_string`, through MLflow's own pagination helper."""
    from mlflow.utils import get_results_from_paginated_fn

    search: Callable = lambda size, token: client.search_runs(  # noqa: E731
        experiment_ids, filter_string=filter_string, max_results=size, page_token=token, **kwargs)
    return get_results_from_paginated_fn(search, PAGE)


def ui_hint(uri: str | None, experiment_id: str, run_id: str) -> str:
    """A run's page: on a server, or in `mlflow ui` started where the local store is."""
    uri = resolve_uri(uri)
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}  {adapt_note(uri)}"
