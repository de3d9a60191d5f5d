"""Cluster launchers: submitit (SLURM, tested through submitit_local) and Ray (a loopback head).

Both must leave the MLflow structure of any sweep (one parent run, a FINISHED child per job) and
share the model store across processes. Ray workers inherit the environment of `ray start`, not of
the launching shell, so there jobs find their parent by the sweep folder tag. The end-to-end tests
skip only when the optional extra (`kdexp[slurm]`, `kdexp[ray]`) is not installed."""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import FAST
from helpers import free_port, kdexp, sqlite_uri
from kdexp import tracking
from kdexp.config.checks import ConfigError
from kdexp.run.sweep import parent_for_job, sweep_dir_of, threads_per_job

QUIET = [*FAST, "data.limit_train=300", "tracking.log_model=false"]
CALLBACK = {"mlflow_sweep": {"_target_": "kdexp.run.sweep.MlflowSweep"}}


def _hydra(launcher=None, sweep_dir="outputs/multirun/a", cwd="/launch", callbacks=CALLBACK):
    return OmegaConf.create({"mode": RunMode.MULTIRUN, "sweep": {"dir": sweep_dir},
                             "runtime": {"cwd": cwd}, "launcher": launcher or {}, "callbacks": callbacks})


def _cores():
    return len(os.sched_getaffinity(0))


# --- threads and the parent lookup, without a cluster ---------------------------------------


@pytest.mark.parametrize("launcher,env,expected", [
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, {},
     lambda: max(1, _cores() // 2)),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": 3},
     {}, lambda: 3),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": None},
     {"SLURM_CPUS_PER_TASK": "5"}, lambda: 5),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"}, {}, _cores),
    ({"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
      "ray": {"init": {}, "remote": {"num_cpus": 2}}}, {}, lambda: 2),
    ({"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
      "ray": {"init": {}, "remote": {}}}, {}, lambda: 1),
    ({"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
      "ray": {"init": {}, "remote": {"num_cpus": 0.5}}}, {}, lambda: 1),
])
def test_threads_per_job_follow_what_the_launcher_gave_the_job(monkeypatch, launcher, env, expected):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert threads_per_job(_hydra(launcher)) == expected()


def test_relative_sweep_folder_is_taken_from_where_the_sweep_was_composed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a Ray worker runs in the folder of `ray start`, not the launcher's
    assert sweep_dir_of(_hydra(cwd="/launch")) == "/launch/outputs/multirun/a"
    assert sweep_dir_of(_hydra(sweep_dir="/shared/sweeps/a")) == "/shared/sweeps/a"


@pytest.fixture
def no_tracking_env(monkeypatch):
    """Neither the parent id nor a tracking URI in the environment; MLflow's global URI (which
    mlflow.set_tracking_uri also writes to the environment) restored afterwards."""
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", utils._tracking_uri)
    monkeypatch.delenv(tracking.SWEEP_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_job_finds_its_parent_by_tag_in_the_store_its_config_names(tmp_path, monkeypatch, no_tracking_env):
    """No KDEXP_PARENT_RUN_ID and no MLFLOW_TRACKING_URI in the job: tracking.uri leads to the tag."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    hydra_cfg = _hydra(cwd=str(tmp_path / "launch"))
    parent = tracking.start_sweep(uri, "kdexp", sweep_dir_of(hydra_cfg), ["loss.temperature=2,4"])
    monkeypatch.chdir(tmp_path / "..")  # the job runs elsewhere
    assert parent_for_job(hydra_cfg, OmegaConf.create({"uri": uri, "experiment": "kdexp"})) == parent


def test_job_without_its_parent_stops_in_one_line_naming_tracking_uri(tmp_path, monkeypatch, no_tracking_env):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with pytest.raises(ConfigError) as err:
        parent_for_job(_hydra(), OmegaConf.create({"uri": uri, "experiment": "kdexp"}))
    assert "tracking.uri=" in str(err.value) and "\n" not in str(err.value)
    # A multirun without kdexp's callback has no parent to find, and that is fine.
    assert parent_for_job(_hydra(callbacks={}), OmegaConf.create({"uri": uri, "experiment": "kdexp"})) is None


def test_launcher_choices_from_plugins_pass_the_group_check():
    from kdexp.cli.main import check_group_choices

    check_group_choices(["hydra/launcher=joblib", "hydra/launcher=ray_cluster", "hydra/launcher=submitit_local"])


# --- end to end ------------------------------------------------------------------------------


def assert_one_parent_two_finished_children_one_teacher(uri):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("kdexp")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kdexp.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert parents[0].data.tags["kdexp.jobs"] == "2/2 finished"
    # The two jobs ran at once: one trained the teacher, the other waited on the lock and loaded it.
    assert sorted(c.data.tags["kdexp.teacher.source"] for c in children) == ["store", "trained"]
    store = client.search_runs([client.get_experiment_by_name("kdexp-store").experiment_id])
    assert len([r for r in store if r.data.tags["kdexp.label"].startswith("teacher")]) == 1
    return parents[0], children


@pytest.mark.slow
def test_submitit_local_sweep_two_jobs_under_one_parent(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    kdexp(["-m", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
           "hydra.launcher.timeout_min=10", "loss.temperature=2,4", *QUIET], tmp_path, timeout=300, check=True)
    parent, children = assert_one_parent_two_finished_children_one_teacher(sqlite_uri(tmp_path))
    assert {c.data.params["trainer.threads"] for c in children} == {"1"}
    # Each job ran as its own submitit process, with its logs next to the sweep.
    logs = list(Path(parent.data.tags["kdexp.sweep_dir"]).glob(".submitit/*/*_log.out"))
    assert len(logs) == 2


def ray_env() -> dict[str, str]:
    """What the head and the launching process share. Ray replaces a loopback --node-ip-address by
    the machine's address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is 0 (its single-machine switch);
    with it every Ray server binds to 127.0.0.1. Token authentication with a token of this test's
    own, set explicitly, so that a ~/.ray/auth_token of the user's neither helps nor interferes."""
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head on 127.0.0.1 with 2 CPUs, started in its own folder and environment (no tracking
    URI, no parent run id), stopped with its whole process group afterwards."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray is None:
        pytest.skip("the ray command is not installed")
    folder = tmp_path / "head"
    folder.mkdir()
    temp_dir = tempfile.mkdtemp(prefix="kdray", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", tracking.SWEEP_ENV)}
    shared = ray_env()
    env.update(shared)
    log = open(folder / "head.log", "w")
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--num-gpus=0", "--include-dashboard=false", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
         f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "block forever" not in (folder / "head.log").read_text():
            assert head.poll() is None, (folder / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not start in 120 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", folder, shared
    finally:
        _stop_group(head)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the head's process group (only the processes this test started), SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            process.poll()
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)
    process.wait(timeout=10)


@pytest.mark.slow
def test_ray_sweep_on_a_loopback_head_two_jobs_under_one_parent(tmp_path, ray_head):
    address, head_folder, shared = ray_head
    work = tmp_path / "work"
    work.mkdir()
    uri = f"sqlite:///{work}/mlflow.db"
    kdexp(["-m", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={address}",
           "hydra.launcher.ray.remote.num_cpus=1", f"tracking.uri={uri}", "loss.temperature=2,4", *QUIET],
          work, timeout=300, env={"MLFLOW_TRACKING_URI": None, **shared}, check=True)
    parent, children = assert_one_parent_two_finished_children_one_teacher(uri)
    assert {c.data.params["trainer.threads"] for c in children} == {"1"}
    assert parent.data.tags["kdexp.sweep_dir"].startswith(str(work / "outputs" / "multirun"))
    # The jobs ran in the head's folder (Hydra's job folders are there) yet wrote no store of their
    # own: runs and store artifacts went where tracking.uri and the launcher put them.
    assert list(head_folder.glob("outputs/multirun/*/*/0/.hydra"))
    assert not (head_folder / "mlflow.db").exists() and not (head_folder / "mlruns").exists()
    assert (work / "mlruns").is_dir()
