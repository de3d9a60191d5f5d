"""The shared tracking server as teams run it (issue 25): PostgreSQL behind `mlflow server
--app-name basic-auth` with proxied artifacts (tests/server_fixture.py starts both, once for the
module, and stops them by PID).

Cases: credentials missing or wrong and a read-only user stop in one line before any training; a
password in `tracking.uri` reaches no param, tag, artifact nor printed line; sweeps and single runs
at once, the model store, `kdexp-report` and `kdexp-export`; the server stopped and restarted
mid-sweep (one line, nothing lost, no duplicate), and never back (one line, bounded, resumed by the
same command). The redaction itself is checked without a server (fast).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import FAST
from helpers import kdexp
from server_fixture import ADMIN_PASSWORD

ALICE, ALICE_PASSWORD = "alice", "alice-Pa55word-1234"   # EDIT on everything she creates
BOB, BOB_PASSWORD = "bob", "bob-Pa55word-12345"           # READ on the others' experiments (the default)
SECRET = "Url-Secret-9f3c1e77"                             # carol's password, given in tracking.uri only
QUIET = [*FAST, "data.limit_train=300", "tracking.log_model=false", "trainer.threads=1"]


# --- the redaction, no server --------------------------------------------------------------------

def test_redact_masks_url_passwords_secret_keys_and_known_values(monkeypatch):
    from kdexp.tracking import secrets

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "env-password-77")
    text = ("tracking.uri=https://me:pw-in-url-1@host:5000 seed=1 +db.password=abcd1234 api.token='t0k en' "
            "loss.temperature=4 and env-password-77 again")
    out = secrets.redact(text)
    for secret in ("pw-in-url-1", "abcd1234", "t0k en", "env-password-77"):
        assert secret not in out
    assert "https://me:***@host:5000" in out and "seed=1" in out and "loss.temperature=4" in out
    # a value seen once is scrubbed wherever it shows up later (a resolved config, a traceback)
    assert secrets.redact("connecting to host with pw-in-url-1 failed") == "connecting to host with *** failed"
    assert secrets.redact("db:\n  password: hunter2-x\n  user: me\n") == "db:\n  password: ***\n  user: me\n"
    assert secrets.redact_values({"kdexp.run_key": "abc123", "db.password": "zz-top-1"}) == \
        {"kdexp.run_key": "abc123", "db.password": "***"}
    assert secrets.redact_uri("https://me:pw@host:5000/x") == "https://host:5000/x"
    assert secrets.redact_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"


def test_access_problems_name_what_to_set(monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, PERMISSION_DENIED, UNAUTHENTICATED

    from kdexp.tracking.connect import access_problem
    from kdexp.tracking.outage import outage_budget, server_gone

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    unauthenticated = MlflowException("401", error_code=UNAUTHENTICATED)
    line = access_problem(unauthenticated, "http://127.0.0.1:5000")
    assert "MLFLOW_TRACKING_USERNAME" in line and "MLFLOW_TRACKING_PASSWORD" in line
    line = access_problem(unauthenticated, "http://eve:pw-123456@127.0.0.1:5000")
    assert "'eve'" in line and "pw-123456" not in line
    line = access_problem(MlflowException("403", error_code=PERMISSION_DENIED), "http://h:1", "kdexp")
    assert "EDIT" in line and "'kdexp'" in line
    assert access_problem(MlflowException("other", error_code=INVALID_PARAMETER_VALUE), "http://h:1") is None
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "1")
    assert outage_budget() == pytest.approx(4 + 8 + 16 + 32 + 64 + 120 + 6)  # MLflow's defaults: ~4 min
    assert not server_gone(RuntimeError("a bug"))
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert server_gone(MlflowException("API request to http://h/x failed: Max retries exceeded with url"))
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"  # what follows fails at once


# --- against the server ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def team():
    import server_fixture

    reason = server_fixture.missing()
    if reason:
        pytest.skip(reason)
    server = server_fixture.TeamServer()
    try:  # closed whatever happens, even a start that fails half-way (PostgreSQL up, MLflow not)
        server.start()
        server.create_user(ALICE, ALICE_PASSWORD)
        server.create_user(BOB, BOB_PASSWORD)
        server.create_user("carol", SECRET)
        yield server
    finally:
        server.close()


def _as(user: str | None, password: str | None, url: str) -> dict:
    """The environment of a kdexp process on a team member's machine."""
    return {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


def _admin_runs(team, experiment: str) -> list:
    with team.as_user("admin", ADMIN_PASSWORD):
        client = team.client()
        exp = client.get_experiment_by_name(experiment)
        return [] if exp is None else client.search_runs([exp.experiment_id])


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = [l for l in (result.stdout + result.stderr).splitlines() if l.startswith("kdexp: error:")]
    assert result.returncode != 0 and len(lines) == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "epoch" not in result.stdout  # stopped before any training
    return lines[0]


@pytest.mark.slow
def test_credentials_and_permissions_stop_in_one_line_before_training(team, tmp_path):
    # an experiment of alice's, which bob may read (the server's default) but not write
    with team.as_user(ALICE, ALICE_PASSWORD):
        team.client().create_experiment("alice-exp")
    args = [*QUIET, "loss=none", "tracking.experiment=alice-exp"]
    line = _one_line(kdexp(args, tmp_path, env=_as(None, None, team.url)))
    assert "MLFLOW_TRACKING_USERNAME" in line and "MLFLOW_TRACKING_PASSWORD" in line
    line = _one_line(kdexp(args, tmp_path, env=_as(ALICE, "not-her-password", team.url)))
    assert "refused user 'alice'" in line and "not-her-password" not in line
    line = _one_line(kdexp(args, tmp_path, env=_as(BOB, BOB_PASSWORD, team.url)))
    assert "user 'bob' may not write to experiment 'alice-exp'" in line and "EDIT" in line
    assert _admin_runs(team, "alice-exp") == []  # no run was started


def _texts_of(team, runs: list) -> list[tuple[str, str]]:
    """(where, text) of every param, tag, run name and artifact file of `runs`."""
    import mlflow

    found = []
    with team.as_user("admin", ADMIN_PASSWORD):
        for run in runs:
            found += [(f"{run.info.run_id} param {k}", v) for k, v in run.data.params.items()]
            found += [(f"{run.info.run_id} tag {k}", v) for k, v in run.data.tags.items()]
            found.append((f"{run.info.run_id} name", run.info.run_name or ""))
            with tempfile.TemporaryDirectory() as tmp:
                mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=tmp, tracking_uri=team.url)
                for path in Path(tmp).rglob("*"):
                    if path.is_file():
                        found.append((f"{run.info.run_id} artifact {path.relative_to(tmp)}",
                                      path.read_bytes().decode("utf-8", "replace")))
    return found


@pytest.mark.slow
def test_a_password_in_tracking_uri_is_never_stored_nor_printed(team, tmp_path):
    url = team.url.replace("http://", f"http://carol:{SECRET}@")
    result = kdexp([*QUIET, "loss=none", f"tracking.uri={url}", "tracking.experiment=carol-exp"], tmp_path,
                   env=_as(None, None, None), check=True)
    assert SECRET not in result.stdout + result.stderr
    assert team.url in result.stdout  # the printed links point at the server, without credentials
    runs = _admin_runs(team, "carol-exp") + _admin_runs(team, "carol-exp-store")
    assert len(runs) >= 2 and {r.info.status for r in runs} == {"FINISHED"}
    texts = _texts_of(team, runs)
    assert any(where.endswith("param tracking.uri") and "carol:***@" in text for where, text in texts)
    assert any("hydra/overrides.yaml" in where for where, _ in texts)  # Hydra's files were logged, redacted
    leaks = [where for where, text in texts if SECRET in text]
    assert leaks == []


def _statuses(runs: list) -> set[str]:
    return {r.info.status for r in runs}


@pytest.mark.slow
def test_sweeps_and_single_runs_at_once_on_the_team_server(team, tmp_path):
    """The issue's workload, smaller: a joblib sweep of 4 jobs, a second sweep and a single run at
    once, from one machine (one working folder: one lock folder), then the report and an export."""
    env = _as(ALICE, ALICE_PASSWORD, team.url)
    common = [*QUIET, "tracking.experiment=team"]
    from helpers import kdexp_env

    started = time.monotonic()
    commands = [["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "loss.temperature=1,2", "loss.alpha=0.5,0.9"],
                ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "loss.temperature=4,8"],
                ["loss.temperature=6"]]
    procs = [subprocess.Popen([sys.executable, "-m", "kdexp", *c, *common], cwd=tmp_path, env=kdexp_env(tmp_path, env),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    print(f"3 launches, 7 jobs at once: {time.monotonic() - started:.0f} s")

    runs = _admin_runs(team, "team")
    jobs = [r for r in runs if r.data.tags.get("kdexp.role") in ("job", "single")]
    assert len(jobs) == 7 and _statuses(runs) == {"FINISHED"}
    store = _admin_runs(team, "team-store")
    teachers = [r for r in store if r.data.tags["kdexp.label"].startswith("teacher")]
    assert len(teachers) == 1 and _statuses(store) == {"FINISHED"}  # trained once on this machine
    assert sum(r.data.tags["kdexp.teacher.source"] == "trained" for r in jobs) == 1

    report = kdexp(["--experiment", "team", "--out", str(tmp_path / "report")], tmp_path, env=env,
                   module="kdexp.report")
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    assert (tmp_path / "report" / "report.csv").is_file() and "logged to the parent run" in report.stdout
    rows = (tmp_path / "report" / "report.csv").read_text().splitlines()
    assert len(rows) - 1 in (2, 4)  # every job of the latest sweep (which of the two started last)
    exported = kdexp([jobs[0].info.run_id, str(tmp_path / "teacher.pt"), "--experiment", "team"], tmp_path, env=env,
                     module="kdexp.cli.export")
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]
    assert (tmp_path / "teacher.pt").stat().st_size > 0


def _wait_for_run(team, experiment: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not [r for r in _admin_runs(team, experiment) if r.data.tags.get("kdexp.role") in ("job", "single")]:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(1)


@pytest.mark.slow
def test_server_stopped_and_restarted_mid_sweep(team, tmp_path):
    from helpers import start_kdexp

    args = ["-m", "loss.temperature=2,4", *QUIET, "trainer.epochs=3", "tracking.experiment=outage"]
    proc = start_kdexp(args, tmp_path, env=_as(ALICE, ALICE_PASSWORD, team.url))
    _wait_for_run(team, "outage", proc)
    team.stop_mlflow()
    time.sleep(20)
    team.start_mlflow()
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-3000:]
    waits = [l for l in out.splitlines() if "does not answer; waiting" in l]
    assert 1 <= len(waits) <= 2, out[-3000:]  # one line per request caught by the outage, not one per retry
    assert "Retrying" not in out
    runs = _admin_runs(team, "outage")
    jobs = [r for r in runs if r.data.tags.get("kdexp.role") == "job"]
    assert len(jobs) == 2 and _statuses(runs) == {"FINISHED"}  # nothing lost, no duplicate
    assert all(len(team_metric(team, j.info.run_id, "student_acc")) >= 1 for j in jobs)


def team_metric(team, run_id: str, key: str) -> list:
    with team.as_user("admin", ADMIN_PASSWORD):
        return team.client().get_metric_history(run_id, key)


@pytest.mark.slow
def test_server_never_back_fails_in_one_line_then_the_same_command_resumes(team, tmp_path):
    from helpers import start_kdexp

    env = {**_as(ALICE, ALICE_PASSWORD, team.url), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    args = [*QUIET, "loss=none", "trainer.epochs=3", "tracking.experiment=gone"]
    proc = start_kdexp(args, tmp_path, env=env)
    _wait_for_run(team, "gone", proc)
    team.stop_mlflow()
    stopped = time.monotonic()
    try:
        out = proc.communicate(timeout=300)[0]
    finally:
        gave_up = time.monotonic() - stopped
        team.start_mlflow()
    assert proc.returncode != 0
    errors = [l for l in out.splitlines() if l.startswith("kdexp: error:")]
    assert len(errors) == 1 and "run the same command again" in errors[0], out[-3000:]
    assert "Traceback" not in out
    assert gave_up < 120  # bounded: a few seconds of retries, then the run's last writes tried once
    first = [r for r in _admin_runs(team, "gone") if r.data.tags.get("kdexp.role") == "single"]
    assert len(first) == 1
    again = kdexp(args, tmp_path, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming MLflow run {first[0].info.run_id}" in again.stdout
    runs = [r for r in _admin_runs(team, "gone") if r.data.tags.get("kdexp.role") == "single"]
    assert [r.info.run_id for r in runs] == [first[0].info.run_id] and _statuses(runs) == {"FINISHED"}


# --- two machines, one missing teacher (a local store stands for the shared one) -----------------

def test_the_second_machine_uses_the_entry_the_first_stored_while_it_trained(store, capsys):
    import mlflow
    import torch

    from kdexp import tracking
    from kdexp.run.model_store import Entry

    tracking.prepare(store, "kdexp-store")
    mine = Entry("kdexp-store", "k" * 64, {"model": "cnn"}, "teacher cnn", reuse=True)
    assert mine.state is None  # a miss: this machine trains it...
    first = tracking.save_stored("kdexp-store", "k" * 64, {"model": "cnn"}, "teacher cnn",
                                 {"w": torch.ones(2)}, {"acc": [50.0]})  # ...while the other one stores it
    mine.save({"w": torch.zeros(2)}, {"acc": [49.0]})
    assert mine.stored_elsewhere and mine.run_id == first
    assert torch.equal(mine.state["w"], torch.ones(2)) and mine.history == {"acc": [50.0]}
    assert "stored by another process while this one made it" in capsys.readouterr().out
    client = mlflow.MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("kdexp-store")
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [first]  # one entry per key
    # store.reuse=false stores its own whatever is there
    forced = Entry("kdexp-store", "k" * 64, {"model": "cnn"}, "teacher cnn", reuse=False)
    forced.save({"w": torch.zeros(2)}, {})
    assert not forced.stored_elsewhere and forced.run_id != first


def test_an_entry_another_machine_is_writing_is_left_alone(store):
    import socket

    import mlflow

    from kdexp import tracking
    from kdexp.tracking.model_store import WRITER_TAG, find_stored

    tracking.prepare(store, "kdexp-store")
    client = mlflow.MlflowClient(tracking_uri=store)
    exp_id = client.get_experiment_by_name("kdexp-store").experiment_id
    tags = {"kdexp.store_key": "q" * 64, "kdexp.role": "store"}
    elsewhere = client.create_run(exp_id, tags={**tags, WRITER_TAG: "another-host:123"})
    dead_here = client.create_run(exp_id, tags={**tags, WRITER_TAG: f"{socket.gethostname()}:999999999"})
    assert find_stored("kdexp-store", "q" * 64) is None
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"   # may be uploading right now
    assert client.get_run(dead_here.info.run_id).info.status == "FAILED"    # its writer is gone
