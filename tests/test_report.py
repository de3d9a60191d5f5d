"""kdexp-report on MLflow stores the tests build: a 2 × 2 temperature × alpha sweep with a failed job,
a temperature sweep over two seeds, and the one-line errors when there is nothing to report."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import kdexp, kdexp_env, read_csv
from kdexp import report
from kdexp.cli import report as report_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def empty_store_file(tmp_path_factory) -> Path:
    """An empty, migrated sqlite store made once: creating one runs MLflow's migrations (seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def db(store, tmp_path, empty_store_file) -> str:
    """The `store` fixture's URI, with a copy of the empty store in place."""
    shutil.copy(empty_store_file, tmp_path / "mlflow.db")
    return store


def make_sweep(uri: str, name: str, sweep_overrides: str, jobs: list[dict], sweep_dir: Path | None = None,
               experiment: str = "kdexp", start: int | None = None) -> tuple[str, list[str]]:
    """A parent run tagged as a sweep and one nested child per job, as `kdexp -m` leaves them.
    Each job: {"overrides": {key: value}, "metrics": {...}, "status": "FINISHED"|"FAILED"}."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    start = start or int(time.time() * 1000)
    tags = {"kdexp.role": "sweep", "kdexp.sweep_overrides": sweep_overrides}
    if sweep_dir is not None:
        tags["kdexp.sweep_dir"] = str(sweep_dir)
    parent = client.create_run(exp_id, run_name=name, start_time=start, tags=tags).info.run_id
    children = []
    for i, job in enumerate(jobs):
        overrides = " ".join(f"{k}={v}" for k, v in job["overrides"].items())
        child = client.create_run(exp_id, run_name=overrides, start_time=start + 1 + i,
                                  tags={"mlflow.parentRunId": parent, "kdexp.role": "job",
                                        "overrides": overrides, **job.get("tags", {})}).info.run_id
        # params are the resolved config: floats print as floats ("4.0" for the override "4")
        params = {"seed": "0", "data.name": "mnist5k", "trainer.epochs": "2", "loss.temperature": "4.0",
                  "loss.alpha": "0.5"}
        params.update({k: str(float(v)) if k.startswith("loss.") else str(v) for k, v in job["overrides"].items()})
        now = int(time.time() * 1000)
        client.log_batch(child, metrics=[Metric("student/test_acc", 90.0, now, 1)]
                         + [Metric(k, v, now, 0) for k, v in job.get("metrics", {}).items()],
                         params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(child, job.get("status", "FINISHED"))
        children.append(child)
    client.set_terminated(parent, "FINISHED")
    return parent, children


def job(overrides: dict, student: float | None, baseline: float = 94.0, status: str = "FINISHED",
        wall: float = 12.0, val: float | None = None) -> dict:
    metrics = {} if student is None else {"student_acc": student, "baseline_acc": baseline,
                                          "kd_gain": student - baseline, "teacher_acc": 97.5,
                                          "wall_time_s": wall}
    tags = {"kdexp.objective": "student_acc"} if student is not None else {}
    if val is not None:
        metrics["student_val_acc"] = val
        tags["kdexp.objective"] = "student_val_acc"
    return {"overrides": overrides, "metrics": metrics, "status": status, "tags": tags}


GRID = [  # temperature × alpha; (T=4, α=0.5) failed
    job({"trainer.epochs": 2, "loss.temperature": 1, "loss.alpha": 0.1}, 94.6, wall=11.0),
    job({"trainer.epochs": 2, "loss.temperature": 1, "loss.alpha": 0.5}, 94.2, wall=10.5),
    job({"trainer.epochs": 2, "loss.temperature": 4, "loss.alpha": 0.1}, 95.3, wall=12.5),
    job({"trainer.epochs": 2, "loss.temperature": 4, "loss.alpha": 0.5}, None, status="FAILED"),
]

SEEDS = [  # temperature × seed
    job({"loss.temperature": 1, "seed": 0}, 95.0, baseline=94.0),
    job({"loss.temperature": 1, "seed": 1}, 95.4, baseline=94.2),
    job({"loss.temperature": 4, "seed": 0}, 96.0, baseline=94.0),
    job({"loss.temperature": 4, "seed": 1}, 96.2, baseline=94.2),
]


def artifacts(uri: str, run_id: str, path: str = "report") -> set[str]:
    from mlflow import MlflowClient

    return {Path(a.path).name for a in MlflowClient(tracking_uri=uri).list_artifacts(run_id, path)}


def test_grid_sweep_report(db, tmp_path, capsys):
    # an older sweep and a run outside any sweep: the report picks the latest sweep
    make_sweep(db, "old sweep", "loss.alpha=0.1,0.9", [job({"loss.alpha": 0.1}, 90.0),
                                                          job({"loss.alpha": 0.9}, 91.0)],
               start=int(time.time() * 1000) - 60_000)
    sweep_dir = tmp_path / "outputs" / "sweep"
    sweep_dir.mkdir(parents=True)
    parent, children = make_sweep(db, "T×α", "trainer.epochs=2 loss.temperature=1,4 loss.alpha=0.1,0.5",
                                  GRID, sweep_dir)

    assert report_cli.main([]) == 0
    out = capsys.readouterr().out
    folder = sweep_dir / "report"
    assert {p.name for p in folder.iterdir()} == {"report.csv", "report.md", "student_acc.png", "kd_gain.png"}
    for png in ("student_acc.png", "kd_gain.png"):
        assert (folder / png).read_bytes()[:8] == PNG_MAGIC

    rows = read_csv(folder / "report.csv")
    # swept keys only (trainer.epochs is the same everywhere), ranked by student accuracy, failed last
    assert list(rows[0])[:4] == ["rank", "loss.temperature", "loss.alpha", "status"]
    assert [(r["rank"], r["loss.temperature"], r["loss.alpha"], r["status"]) for r in rows] == [
        ("1", "4", "0.1", "FINISHED"), ("2", "1", "0.1", "FINISHED"), ("3", "1", "0.5", "FINISHED"),
        ("", "4", "0.5", "FAILED")]
    assert float(rows[0]["student_acc"]) == 95.3
    assert float(rows[0]["kd_gain"]) == pytest.approx(1.3)
    assert float(rows[0]["teacher_acc"]) == 97.5
    assert rows[3]["student_acc"] == "" and rows[3]["run_ids"] == children[3]

    md = (folder / "report.md").read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert table[0] == ("| rank | loss.temperature | loss.alpha | student acc % | baseline % | KD gain | wall s "
                        "| status | run |")
    assert table[2].startswith("| 1 | 4 | 0.1 | 95.30 | 94.00 | +1.30 | 12.5 | FINISHED |")
    assert table[-1].startswith("| – | 4 | 0.5 | – | – | – | – | FAILED |")
    assert parent in md[2]

    # the terminal table: same order, and where the files went
    assert out.index("95.30") < out.index("94.60") < out.index("94.20") < out.index("FAILED")
    assert "ranked by student acc" in out and f"parent run {parent}" in out

    assert artifacts(db, parent) == {"report.csv", "report.md", "student_acc.png", "kd_gain.png"}


def test_seeds_are_averaged(db, tmp_path, capsys):
    parent, _ = make_sweep(db, "T × seed", "loss.temperature=1,4 seed=0,1", SEEDS)
    rep, folder, files = report_cli.make_report(out=tmp_path / "rep", show_table=True)
    out = capsys.readouterr().out

    assert rep.axes == ["loss.temperature"] and rep.by_seed
    assert [e.values for e in rep.ranked] == [{"loss.temperature": 4.0}, {"loss.temperature": 1.0}]
    assert [f.name for f in files] == ["report.csv", "report.md", "student_acc.png", "kd_gain.png", "groups.csv",
                                       "groups.md", "comparisons.csv", "comparisons.md", "kd_gain_ci.png"]
    assert "96.10 ± 0.14" in out and "95.20 ± 0.28" in out and "mean ± std over seeds" in out

    rows = read_csv(folder / "report.csv")
    assert [(r["rank"], r["loss.temperature"], r["n_seeds"], r["seed"]) for r in rows] == [
        ("1", "4", "2", "0 1"), ("2", "1", "2", "0 1")]
    assert float(rows[1]["student_acc"]) == pytest.approx(95.2)
    assert float(rows[1]["student_acc_std"]) == pytest.approx(0.2828, abs=1e-4)  # sample std (n - 1)
    assert float(rows[1]["kd_gain"]) == pytest.approx(1.1)
    md = (folder / "report.md").read_text()
    assert "| 2 | 1 | 2 | 95.20 ± 0.28 | 94.10 ± 0.14 | +1.10 ± 0.14 |" in md
    assert artifacts(db, parent) == {f.name for f in files}


def test_failed_seed_listed_not_averaged(db, tmp_path):
    jobs = SEEDS[:3] + [job({"loss.temperature": 4, "seed": 1}, None, status="FAILED")]
    make_sweep(db, "T × seed", "loss.temperature=1,4 seed=0,1", jobs)
    rep, folder, _ = report_cli.make_report(out=tmp_path / "rep", log=False, show_table=False)
    assert [(e.rank, e.status, len(e.runs)) for e in rep.entries] == [(1, "FINISHED", 1), (2, "FINISHED", 2),
                                                                       (None, "FAILED", 1)]
    md = (folder / "report.md").read_text()
    assert "| 1 | 4 | 1 | 96.00 |" in md  # one seed: no ± part
    assert "| – | 4 | seed 1 | – |" in md


def test_parent_by_id_and_no_log(db, tmp_path):
    first, _ = make_sweep(db, "first", "loss.temperature=1,4 loss.alpha=0.1,0.5", GRID,
                          start=int(time.time() * 1000) - 60_000)
    make_sweep(db, "second", "loss.temperature=1,4 seed=0,1", SEEDS)
    assert report_cli.main(["--parent", first, "--out", str(tmp_path / "r"), "--no-log"]) == 0
    assert read_csv(tmp_path / "r" / "report.csv")[0]["loss.alpha"] == "0.1"
    assert artifacts(db, first) == set()


def test_default_folder_without_local_sweep_dir(db, tmp_path):
    parent, _ = make_sweep(db, "remote", "loss.temperature=1,4 loss.alpha=0.1,0.5", GRID,
                           sweep_dir=Path("/elsewhere/outputs/sweep"))
    assert report_cli.main([]) == 0
    assert (tmp_path / "outputs" / f"report-{parent}" / "report.csv").is_file()


def test_validation_objective_ranks_and_reruns_count_once(db, tmp_path):
    jobs = [job({"loss.temperature": 1, "loss.alpha": 0.1}, 95.0, val=94.0),
            job({"loss.temperature": 1, "loss.alpha": 0.5}, 94.0, val=95.0),
            job({"loss.temperature": 4, "loss.alpha": 0.1}, None, status="FAILED"),
            job({"loss.temperature": 4, "loss.alpha": 0.5}, 93.0, val=93.5),
            job({"loss.temperature": 4, "loss.alpha": 0.1}, 96.0, val=93.8)]  # the failed job, run again
    make_sweep(db, "val", "loss.temperature=1,4 loss.alpha=0.1,0.5", jobs)
    rep, folder, _ = report_cli.make_report(out=tmp_path / "rep", log=False, show_table=False)
    assert rep.rank_by.key == "student_val_acc" and rep.superseded == 1
    assert [(e.values["loss.temperature"], e.values["loss.alpha"]) for e in rep.entries] == [
        (1.0, 0.5), (1.0, 0.1), (4.0, 0.1), (4.0, 0.5)]
    assert [e.status for e in rep.entries] == ["FINISHED"] * 4
    assert "| val acc % |" in (folder / "report.md").read_text()


def test_heatmap_keeps_failed_settings_and_irregular_search_scatters(db, tmp_path):
    jobs = [job({"loss.temperature": 1, "loss.alpha": 0.1}, 95.0), job({"loss.temperature": 1, "loss.alpha": 0.5}, 94.0),
            job({"loss.temperature": 4, "loss.alpha": 0.1}, None, status="FAILED"),
            job({"loss.temperature": 4, "loss.alpha": 0.5}, None, status="FAILED")]
    parent, _ = make_sweep(db, "grid", "loss.temperature=1,4 loss.alpha=0.1,0.5", jobs)
    rep, _, files = report_cli.make_report(parent_id=parent, out=tmp_path / "grid", log=False, show_table=False)
    grid, rows_, cols = report.value_grid(rep, "student_acc")
    assert rows_ == ["1", "4"] and cols == ["0.1", "0.5"] and grid[0] == [95.0, 94.0]
    assert all(v != v for v in grid[1])  # NaN: the failed row is still drawn
    assert not report.irregular(rep)

    trials = [job({"loss.temperature": t, "loss.alpha": a}, acc)  # an Optuna-like search
              for t, a, acc in [(1.3, 0.21, 95.0), (2.7, 0.64, 95.5), (5.1, 0.12, 96.0), (7.9, 0.83, 94.5)]]
    parent, _ = make_sweep(db, "search", "hparams_search=optuna_t_alpha", trials)
    rep, _, files = report_cli.make_report(parent_id=parent, out=tmp_path / "search", log=False, show_table=False)
    assert report.irregular(rep) and [f.name for f in files][2:] == ["student_acc.png", "kd_gain.png"]
    assert all(f.read_bytes()[:8] == PNG_MAGIC for f in files[2:])


def one_line_error(capsys, argv: list[str]) -> str:
    assert report_cli.main(argv) == report_cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kdexp-report: error: ")
    return err


def test_missing_store_is_not_created(store, tmp_path, capsys):
    assert "no MLflow store at" in one_line_error(capsys, [])
    assert not (tmp_path / "mlflow.db").exists()
    other = tmp_path / "elsewhere.db"
    assert "elsewhere.db" in one_line_error(capsys, ["--tracking-uri", f"sqlite:///{other}"])
    assert not other.exists()


def test_nothing_to_report(db, capsys):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=db)
    exp_id = client.create_experiment("kdexp")
    lone = client.create_run(exp_id, run_name="single run").info.run_id
    assert "no sweep in experiment 'kdexp'" in one_line_error(capsys, [])
    assert "no experiment 'other'" in one_line_error(capsys, ["--experiment", "other"])
    assert "no run 'deadbeef'" in one_line_error(capsys, ["--parent", "deadbeef"])
    assert "has no child runs" in one_line_error(capsys, ["--parent", lone])


def test_swept_keys_from_overrides():
    assert report.parse_overrides("loss.temperature=2 +trainer.x=1 ~a.b=3 model@student=cnn") == {
        "loss.temperature": "2", "trainer.x": "1", "a.b": "3", "model@student": "cnn"}
    assert report.parse_overrides("(none)") == {}
    assert report.canonical("2") == report.canonical("2.0") == 2.0
    assert report.show(report.canonical("0.10")) == "0.1" and report.canonical("cnn") == "cnn"


def test_overrides_whose_values_hold_spaces_are_cut_by_hydras_grammar():
    """The tag is the job's overrides joined by spaces; shell-style splitting would cut inside
    `[cnn, mlp]` and drop the keys after it."""
    tag = ("loss.teachers=[cnn, {name: cnn, channels: [16, 32]}] tracking.run_name=my first run "
           "data.root='/data sets/mnist' seed=1 ~trainer.compile")
    assert report.parse_overrides(tag) == {
        "loss.teachers": "[cnn,{name:cnn,channels:[16,32]}]", "tracking.run_name": "my first run",
        "data.root": "/data sets/mnist", "seed": "1"}
    assert [o.key_or_group for o in report.split_overrides(tag)] == [
        "loss.teachers", "tracking.run_name", "data.root", "seed", "trainer.compile"]


def test_jobs_differing_in_a_list_with_spaces_are_one_swept_key(db, tmp_path):
    jobs = [job({"teacher.hidden": "[512, 256]", "seed": 0}, 95.0), job({"teacher.hidden": "[256, 128]", "seed": 0}, 94.0)]
    make_sweep(db, "widths", "teacher.hidden=[512, 256],[256, 128]", jobs)
    rep, _, _ = report_cli.make_report(out=tmp_path / "rep", log=False, show_table=False)
    assert rep.axes == ["teacher.hidden"]
    assert [e.values["teacher.hidden"] for e in rep.ranked] == ["[512, 256]", "[256, 128]"]


@pytest.mark.slow
def test_console_entry_in_subprocess(db, tmp_path):
    make_sweep(db, "T×α", "loss.temperature=1,4 loss.alpha=0.1,0.5", GRID)
    env = kdexp_env(tmp_path, {"COLUMNS": "160"})
    done = kdexp(["--out", "rep"], tmp_path, env={"COLUMNS": "160"}, timeout=120, module="kdexp.report", check=True)
    assert "95.30" in done.stdout and (tmp_path / "rep" / "student_acc.png").is_file()
    script = Path(sys.executable).parent / "kdexp-report"  # the console script, once (re)installed
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "kdexp.report"]
    missing = subprocess.run(entry + ["--tracking-uri", "sqlite:///none.db"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert f"no MLflow store at {(tmp_path / 'none.db').resolve()}" in missing.stderr
    assert not (tmp_path / "none.db").exists()
