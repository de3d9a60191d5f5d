"""What the MLflow UI shows (issue 13): training-kind experiments, links to saved run-list views,
run names that tell a sweep's jobs apart, the parent's params and description, rounded figures,
inspectable store entries, the store's path, and one line for a misspelt key."""

import json
from pathlib import Path

import mlflow
import pytest
from omegaconf import OmegaConf

from conftest import FAST, run_experiment
from helpers import kdexp
from kdexp import tracking
from kdexp.cli.main import CONFIG_DIR
from kdexp.report.table import teacher_note
from kdexp.config.suggest import unknown_key
from kdexp.tracking.job_names import job_name, split_overrides, sweep_name
from kdexp.tracking.ui import KIND_TAG, SHARED_VIEW_PREFIX, TRAINING_KIND, rounded

LINK_START = "http://127.0.0.1:5000/#/experiments/"


def _tracking_cfg(name=None):
    return OmegaConf.create({"uri": None, "experiment": "kdexp", "run_name": name})


# --- names ---------------------------------------------------------------------------------------

def test_a_job_is_named_by_what_varies_across_its_sweep_only():
    common = ["trainer.epochs", "data.limit_train", "model@student"]
    overrides = "loss.temperature=2 trainer.epochs=1 loss.alpha=0.5 data.limit_train=512 model@student=cnn"
    assert job_name(overrides, common) == "loss.temperature=2 loss.alpha=0.5"
    assert job_name("trainer.epochs=1", common) is None


def test_override_values_with_spaces_stay_whole():
    assert split_overrides("loss.teachers=[cnn, mlp] seed=1") == ["loss.teachers=[cnn, mlp]", "seed=1"]
    assert job_name("loss.teachers=[cnn, mlp] seed=1", ["seed"]) == "loss.teachers=[cnn, mlp]"


def test_a_parent_is_named_by_its_axes():
    assert sweep_name(["loss.temperature=2,8", "seed=0,1"], "12-00-00") == "sweep loss.temperature=2,8 seed=0,1"
    assert sweep_name([], "12-00-00-123") == "sweep 12-00-00-123"


# --- numbers ---------------------------------------------------------------------------------------

def test_accuracies_and_gains_are_rounded_other_figures_are_not():
    assert rounded("kd_gain", -1.7000000000000028) == -1.7
    assert rounded("student/test_acc", 63.400000000000006) == 63.4
    assert rounded("wall_time_s", 1.23456789) == 1.23456789


# --- experiments, links, parents -------------------------------------------------------------------

def test_experiments_open_as_training_experiments_even_ones_made_before(store):
    client = mlflow.MlflowClient(store)
    old = client.create_experiment("older")  # as an earlier kdexp left it: no kind tag
    _, new = tracking.prepare(None, "kdexp")
    tracking.prepare(None, "older")
    for exp_id in (new, old):
        assert client.get_experiment(exp_id).tags[KIND_TAG] == TRAINING_KIND


def test_a_sweep_parent_has_axes_common_params_and_names_its_jobs(store):
    overrides = ["loss.temperature=2,8", "trainer.epochs=1"]
    parent = tracking.start_sweep(None, "kdexp", str(Path("outputs/multirun/x").absolute()), overrides,
                                  ["loss.temperature=2,8"], {"loss.temperature": "4", "trainer.epochs": "1", "seed": "0"})
    run = mlflow.MlflowClient().get_run(parent)
    assert run.info.run_name == "sweep loss.temperature=2,8"
    assert run.data.params == {"loss.temperature": "2,8", "trainer.epochs": "1", "seed": "0"}
    child = tracking.Run(_tracking_cfg(), "loss.temperature=2 trainer.epochs=1",
                         {"overrides": "loss.temperature=2 trainer.epochs=1"}, parent_run_id=parent)
    child.params({"loss.temperature": 2, "trainer.epochs": 1})
    child.metrics({"student_acc": 63.400000000000006, "baseline_acc": 70.0, "kd_gain": -6.599999999999994})
    child.tags({"kdexp.objective": "student_acc"})
    child.finish()
    saved = mlflow.MlflowClient().get_run(child.run_id)
    assert saved.info.run_name == "loss.temperature=2"
    assert saved.data.tags["overrides"] == "loss.temperature=2 trainer.epochs=1"  # the full list stays
    assert saved.data.metrics["kd_gain"] == -6.6

    status, best = tracking.end_sweep(parent)
    assert status == "FINISHED"
    assert mlflow.MlflowClient().get_run(parent).data.metrics["best_kd_gain"] == -6.6
    link = tracking.sweep_link(parent)
    exp_id = run.info.experiment_id
    assert link == (f"{LINK_START}{exp_id}/runs?workflowType=machine_learning&viewStateShareKey=kdexp-{parent}")
    view = json.loads(mlflow.MlflowClient().get_experiment(exp_id).tags[f"{SHARED_VIEW_PREFIX}kdexp-{parent}"])
    assert view["selectedColumns"] == ["metrics.`student_acc`", "metrics.`baseline_acc`", "metrics.`kd_gain`",
                                       "params.`loss.temperature`"]
    assert parent in view["searchFilter"] and child.run_id in view["searchFilter"]
    assert view["orderByKey"] == "metrics.`student_acc`"
    assert view["chartsSearchFilter"] == "^(student_acc|baseline_acc|kd_gain)$"  # what the chart view draws


def test_a_new_store_is_announced_with_its_absolute_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    tracking.prepare(None, "kdexp")
    assert f"kdexp: new MLflow store: {tmp_path / 'elsewhere.db'}" in capsys.readouterr().out
    tracking.prepare(None, "kdexp")
    assert "new MLflow store" not in capsys.readouterr().out
    assert tracking.tracking_store_location(None) == str(tmp_path / "elsewhere.db")


def test_a_store_entry_has_its_curves_and_links_to_the_run_that_trained_it(store):
    tracking.prepare(None, "kdexp")
    with mlflow.start_run() as trainer:
        run_id = tracking.save_stored("kdexp-store", "k" * 24, {"model": "cnn"}, "teacher cnn", {},
                                      {"loss": [2.0, 1.0], "test_acc": [50.00000000001, 65.7]})
    entry = mlflow.MlflowClient().get_run(run_id)
    assert entry.data.tags["kdexp.trained_by"] == trainer.info.run_id
    assert trainer.info.run_id in entry.data.tags["mlflow.note.content"]
    assert entry.data.metrics["test_acc"] == 65.7
    history = mlflow.MlflowClient().get_metric_history(run_id, "test_acc")
    assert [(m.step, m.value) for m in history] == [(1, 50.0), (2, 65.7)]


# --- the report's wall-time column ------------------------------------------------------------------

def test_the_wall_time_note_tells_trained_from_loaded_teachers():
    from types import SimpleNamespace as Run

    trained, loaded = Run(tags={"kdexp.teacher.source": "trained"}), Run(tags={"kdexp.teacher.source": "store"})
    assert teacher_note([trained]) == " (teacher trained)"
    assert teacher_note([loaded, loaded]) == " (teacher loaded)"
    assert teacher_note([trained, loaded, loaded]) == " (teacher trained in 1 of 3)"
    assert teacher_note([Run(tags={})]) == ""


# --- a misspelt key ---------------------------------------------------------------------------------

def _parse(args):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(args)


GROUPS = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}


@pytest.mark.parametrize("args, suggestion", [
    (["loss.temprature=8"], "loss.temperature"),
    (["loss.temprature=2,8"], "loss.temperature"),  # a sweep
    (["trainr.epochs=1"], "trainer.epochs"),
    (["data.limt_train=5"], "data.limit_train"),
    (["model@student=cnn", "student.chanels=[8]"], "student.channels"),  # the chosen model's keys
])
def test_a_misspelt_key_is_one_line_with_the_closest_key(args, suggestion):
    message = unknown_key(_parse(args), CONFIG_DIR, GROUPS)
    assert message is not None and "\n" not in message
    assert f"did you mean {suggestion}?" in message and "allowed" in message


def test_valid_keys_and_additions_pass():
    args = ["loss=self", "loss.generations=2", "+anything.new=1", "hydra.job.chdir=false", "seed=0,1"]
    assert unknown_key(_parse(args), CONFIG_DIR, GROUPS) is None


@pytest.mark.slow
def test_the_command_line_refuses_a_misspelt_key_in_one_line(tmp_path):
    result = kdexp(["loss.temprature=8"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("kdexp: error: loss.temprature=8: no such key; did you mean loss.temperature? "
                                     "allowed (keys of loss): name, temperature, alpha")
    assert not (tmp_path / "mlflow.db").exists()


# --- end to end -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_single_run_prints_its_store_and_a_link_to_its_figures(store, capsys):
    _, run = run_experiment(["tracking.log_model=false"])
    out = capsys.readouterr().out
    assert f"of {Path(store.removeprefix('sqlite:///'))}" in out
    key = f"kdexp-{run.info.run_id}"
    assert f"{LINK_START}{run.info.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={key}" in out
    view = json.loads(mlflow.MlflowClient().get_experiment(run.info.experiment_id).tags[SHARED_VIEW_PREFIX + key])
    assert view["searchFilter"] == f"attributes.run_id = '{run.info.run_id}'"
    assert view["selectedColumns"][:3] == ["metrics.`student_acc`", "metrics.`baseline_acc`", "metrics.`kd_gain`"]
    assert run.data.metrics["kd_gain"] == round(run.data.metrics["kd_gain"], 4)


@pytest.mark.slow
def test_a_sweep_names_jobs_by_temperature_and_describes_the_results(tmp_path):
    result = kdexp(["-m", "loss.temperature=2,8", *FAST, "tracking.log_model=false"], tmp_path, check=True)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["kdexp"], output_format="list")
    [parent] = [r for r in runs if r.data.tags.get("kdexp.role") == "sweep"]
    jobs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_name == "sweep loss.temperature=2,8"
    assert sorted(j.info.run_name for j in jobs) == ["loss.temperature=2", "loss.temperature=8"]
    assert parent.data.params["loss.temperature"] == "2,8" and parent.data.params["trainer.epochs"] == "1"
    table = parent.data.tags["mlflow.note.content"]
    for job in jobs:
        assert f"{job.data.metrics['kd_gain']:.2f}" in table and job.info.run_id[:8] in table
    assert {"best_student_acc", "best_baseline_acc", "best_kd_gain"} <= set(parent.data.metrics)
    link = f"{LINK_START}{parent.info.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=kdexp-{parent.info.run_id}"
    assert f"every job's results in the UI: {link}" in result.stdout
    assert f"kdexp: new MLflow store: {tmp_path / 'mlflow.db'}" in result.stdout


def test_links_use_a_tracking_servers_own_address():
    from kdexp.tracking.ui import ui_base, view_link

    assert view_link("http://mlflow.lab:8080/", "3", "k") == \
        "http://mlflow.lab:8080/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=k"
    assert ui_base("sqlite:///mlflow.db") == "http://127.0.0.1:5000"
    assert tracking.ui_hint("http://mlflow.lab:8080", "3", "r").startswith(
        "http://mlflow.lab:8080/#/experiments/3/runs/r?workflowType=machine_learning")


def test_a_parent_describes_its_ranked_results_and_each_settings_means(store):
    from kdexp.run.sweep import describe_parent

    parent = tracking.start_sweep(None, "kdexp", str(Path("outputs/multirun/y").absolute()),
                                  ["loss.temperature=2,8", "seed=0,1"], ["loss.temperature=2,8", "seed=0,1"], {})
    for t, seed, acc in ((2, 0, 60.0), (2, 1, 62.0), (8, 0, 70.0), (8, 1, 71.0)):
        overrides = f"loss.temperature={t} seed={seed}"
        job = tracking.Run(_tracking_cfg(), overrides, {"overrides": overrides}, parent_run_id=parent)
        job.params({"loss.temperature": t, "seed": seed})
        job.metrics({"student_acc": acc, "baseline_acc": 65.0, "kd_gain": acc - 65.0})
        job.tags({"kdexp.objective": "student_acc"})
        job.finish()
    describe_parent(parent, None)
    run = mlflow.MlflowClient().get_run(parent)
    assert run.data.metrics["loss.temperature:8/student_acc"] == 70.5
    assert run.data.metrics["loss.temperature:2/kd_gain"] == -4.0
    table = run.data.tags["mlflow.note.content"]
    rows = [line for line in table.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert rows[0].startswith("| 1 | 8 | 2 | 70.50 ± 0.71 | 65.00 ± 0.00 | +5.50 ± 0.71")  # ranked, seeds averaged
    assert rows[1].startswith("| 2 | 2 | 2 | 61.00 ± 1.41")


def test_a_parents_group_metrics_are_named_by_the_launched_axes_while_the_first_group_runs(store):
    """kd=hinton,dkd seed=0,1 with only kd=hinton's jobs done: the means are kd=hinton's, named so —
    never `mean/…` (seed the only axis so far), a name the later groups would not replace."""
    from kdexp.run.sweep import describe_parent

    axes = ["kd=hinton,dkd", "seed=0,1"]
    parent = tracking.start_sweep(None, "kdexp", str(Path("outputs/multirun/z").absolute()), axes, axes, {})

    def finish(kd, seed, acc):
        overrides = f"kd={kd} seed={seed}"
        job = tracking.Run(_tracking_cfg(), overrides, {"overrides": overrides}, parent_run_id=parent)
        job.params({"kd.name": kd, "seed": seed})
        job.metrics({"student_acc": acc, "baseline_acc": 65.0, "kd_gain": acc - 65.0})
        job.finish()

    finish("hinton", 0, 60.0)
    finish("hinton", 1, 62.0)
    describe_parent(parent, None)
    metrics = mlflow.MlflowClient().get_run(parent).data.metrics
    assert metrics["kd:hinton/student_acc"] == 61.0 and not any(k.startswith("mean/") for k in metrics)
    finish("dkd", 0, 70.0)
    finish("dkd", 1, 72.0)
    describe_parent(parent, None)
    metrics = mlflow.MlflowClient().get_run(parent).data.metrics
    assert metrics["kd:hinton/student_acc"] == 61.0 and metrics["kd:dkd/student_acc"] == 71.0
