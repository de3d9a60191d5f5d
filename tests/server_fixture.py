"""A team's tracking server, throwaway: a PostgreSQL 15 cluster (initdb in a temporary folder, as
the unprivileged user `nobody` when the tests run as root: initdb refuses root) and
`mlflow server --app-name basic-auth` on it with proxied artifacts, both on 127.0.0.1 at free ports.

`TeamServer` starts and stops both by PID (the server's whole process group: its uvicorn workers);
`stop_mlflow`/`start_mlflow` take the MLflow server away and bring it back on the same port (an
outage). Users and permissions are made through MLflow's own client,
`mlflow.server.get_app_client("basic-auth", tracking_uri=...)`, as the admin.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from helpers import free_port, server_healthy

ADMIN, ADMIN_PASSWORD = "admin", "admin-Pa55word-for-tests"
PG_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/bin")


def pg_tool(name: str) -> str | None:
    """initdb / postgres on PATH or where Debian's and the source build's packages put them."""
    found = shutil.which(name)
    if found:
        return found
    return next((str(Path(d) / name) for d in PG_DIRS if (Path(d) / name).is_file()), None)


def missing() -> str | None:
    """Why the team-server tests cannot run here, or None."""
    for tool in ("initdb", "postgres"):
        if pg_tool(tool) is None:
            return f"PostgreSQL is not installed ({tool} not found on PATH nor in {', '.join(PG_DIRS)})"
    for module, package in (("psycopg", "psycopg[binary]"), ("flask_wtf", "Flask-WTF")):
        try:
            __import__(module)
        except ImportError:
            return f"{package} is not installed (pip install -e '.[test]')"
    return None



def _stop(process: subprocess.Popen | None, sig: int = signal.SIGTERM, group: bool = True) -> None:
    """Stop a process we started (its process group when `group`), SIGKILL after 15 s."""
    if process is None or process.poll() is not None:
        return
    for signum in (sig, signal.SIGKILL):
        try:
            (os.killpg if group else os.kill)(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


class TeamServer:
    """PostgreSQL + `mlflow server --app-name basic-auth` with proxied artifacts. One worker by
    default: with several, uvicorn's supervisor restarts a worker that misses its 5 s health check,
    which a loaded 2-core CI machine makes happen (each restart is an outage to the clients)."""

    def __init__(self, workers: int = 1):
        self.folder = Path(tempfile.mkdtemp(prefix="kdexp-team-"))
        os.chmod(self.folder, 0o755)  # `nobody` must reach the cluster inside it
        self.workers = workers
        self.pg_port, self.port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.postgres: subprocess.Popen | None = None
        self.mlflow: subprocess.Popen | None = None
        root = os.geteuid() == 0
        self.user = pwd.getpwnam("nobody") if root else None

    # --- PostgreSQL -----------------------------------------------------------------------------
    def _as_owner(self) -> dict:
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []} if self.user else {}

    def start_postgres(self) -> None:
        data = self.folder / "pg"
        data.mkdir()
        if self.user:
            os.chown(data, self.user.pw_uid, self.user.pw_gid)
        env = {"PATH": os.environ.get("PATH", ""), "LANG": "C", "LC_ALL": "C"}
        subprocess.run([pg_tool("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, env=env, cwd=data, timeout=120,
                       **self._as_owner())
        self.postgres_log = open(self.folder / "postgres.log", "w")
        self.postgres = subprocess.Popen(
            [pg_tool("postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.pg_port), "-k", str(data),
             "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=self.postgres_log, stderr=subprocess.STDOUT, env=env, cwd=data, start_new_session=True,
            **self._as_owner())
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                connection = psycopg.connect(host="127.0.0.1", port=self.pg_port, user="postgres", dbname="postgres",
                                             autocommit=True)
                break
            except psycopg.OperationalError:
                assert self.postgres.poll() is None, (self.folder / "postgres.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "PostgreSQL did not accept connections within 60 s"
                time.sleep(0.3)
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE mlflow")
            cursor.execute("CREATE DATABASE mlflow_auth")
        connection.close()

    def database(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/{name}"

    # --- mlflow server --------------------------------------------------------------------------
    def start_mlflow(self, timeout: float = 180) -> None:
        auth_ini = self.folder / "basic_auth.ini"
        auth_ini.write_text("[mlflow]\ndefault_permission = READ\n"
                            f"database_uri = {self.database('mlflow_auth')}\n"
                            f"admin_username = {ADMIN}\nadmin_password = {ADMIN_PASSWORD}\n"
                            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "KDEXP_PARENT_RUN_ID"}
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(auth_ini), MLFLOW_FLASK_SERVER_SECRET_KEY="kdexp-tests-secret-key",
                   MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.mlflow_log = open(self.folder / "mlflow.log", "a")
        self.mlflow = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers),
             "--backend-store-uri", self.database("mlflow"),
             "--artifacts-destination", str(self.folder / "artifacts"), "--serve-artifacts"],
            cwd=self.folder, env=env, stdout=self.mlflow_log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not server_healthy(self.url):
            assert self.mlflow.poll() is None, (self.folder / "mlflow.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"mlflow server was not healthy within {timeout:g} s"
            time.sleep(0.5)

    def stop_mlflow(self) -> None:
        _stop(self.mlflow)
        self.mlflow = None

    def start(self) -> "TeamServer":
        self.start_postgres()
        self.start_mlflow()
        return self

    def close(self) -> None:
        self.stop_mlflow()
        _stop(self.postgres, signal.SIGINT)  # PostgreSQL's fast shutdown
        self.postgres = None
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- users ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def as_user(self, username: str, password: str):
        """MLflow's client environment set to one user inside the block."""
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        os.environ.update(MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def client(self, username: str = ADMIN, password: str = ADMIN_PASSWORD):
        """An MlflowClient bound to the server; call it inside `as_user` (credentials come from the
        environment at each request)."""
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.url)

    def create_user(self, username: str, password: str) -> None:
        from mlflow.server import get_app_client

        with self.as_user(ADMIN, ADMIN_PASSWORD):
            get_app_client("basic-auth", tracking_uri=self.url).create_user(username, password)

    def grant(self, experiment_id: str, username: str, permission: str) -> None:
        from mlflow.server import get_app_client

        with self.as_user(ADMIN, ADMIN_PASSWORD):
            get_app_client("basic-auth", tracking_uri=self.url).grant_user_permission(
                username, "experiment", experiment_id, permission)
