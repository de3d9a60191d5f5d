"""A shared tracking server: a sweep run against a real `mlflow server` on 127.0.0.1 over HTTP.

The server keeps its metadata in sqlite and proxies artifacts (`--artifacts-destination`), so the
runs, the model store's entries and their files all live on the server; the working folder gets no
local store."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from conftest import FAST
from helpers import free_port, kdexp, server_healthy
from kdexp import tracking

pytestmark = pytest.mark.slow
QUIET = [*FAST, "data.limit_train=300", "tracking.log_model=false"]



@pytest.fixture
def server(tmp_path):
    """`mlflow server` on 127.0.0.1:<free port>, sqlite backend and artifacts in tmp_path/server;
    yields (url, server folder) and stops its whole process group afterwards."""
    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", tracking.SWEEP_ENV)}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job workers: a lighter server
    log = open(folder / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not server_healthy(url):
            assert process.poll() is None, (folder / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server was not healthy within 120 s"
            time.sleep(0.5)
        yield url, folder
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def test_sweep_against_a_tracking_server_keeps_everything_on_the_server(tmp_path, server):
    url, server_folder = server
    work = tmp_path / "work"
    work.mkdir()
    result = kdexp(["-m", "loss.temperature=2,4", *QUIET], work, env={"MLFLOW_TRACKING_URI": url}, check=True)
    assert url in result.stdout  # the runs' UI links point at the server

    client = mlflow.MlflowClient(tracking_uri=url)
    runs = client.search_runs([client.get_experiment_by_name("kdexp").experiment_id])
    parents = [r for r in runs if r.data.tags.get("kdexp.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}

    # Teacher reuse through the server: one entry, trained by the first job, loaded by the second.
    store_exp = client.get_experiment_by_name("kdexp-store")
    teachers = [r for r in client.search_runs([store_exp.experiment_id])
                if r.data.tags["kdexp.label"].startswith("teacher")]
    assert len(teachers) == 1
    by_job = {c.data.tags["overrides"].split()[0]: c for c in children}
    assert by_job["loss.temperature=2"].data.tags["kdexp.teacher.source"] == "trained"
    assert by_job["loss.temperature=4"].data.tags["kdexp.teacher.source"] == "store"
    assert {c.data.tags["kdexp.teacher.lineage"] for c in children} == {teachers[0].info.run_id}
    # Its files went through the server into the server's artifact folder.
    assert teachers[0].info.artifact_uri.startswith("mlflow-artifacts:")
    entry = server_folder / "artifacts" / store_exp.experiment_id / teachers[0].info.run_id / "artifacts" / "entry"
    assert (entry / "model.pt").is_file() and (entry / "history.json").is_file()

    # No local store in the working folder: only Hydra's outputs (job folders, checkpoints, locks).
    assert not (work / "mlflow.db").exists() and not (work / "mlruns").exists()
    assert sorted(p.name for p in work.iterdir()) == ["outputs"]
