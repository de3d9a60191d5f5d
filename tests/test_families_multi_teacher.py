"""loss=multi_teacher: teachers chosen by name, the config checks, and each aggregate end to end."""

import mlflow
import pytest

from conftest import compose_cfg, run_experiment
from kdexp.config.checks import ConfigError

SMALL = ["loss.teachers=[mlp,{name:mlp,hidden:[64]}]", "student.hidden=[32]", "tracking.log_model=false"]


def test_teachers_are_resolved_by_name_against_conf_model():
    cfg = compose_cfg(["loss=multi_teacher", "loss.teachers=[cnn,mlp,cnn]"])
    assert [t.name for t in cfg.loss.teachers] == ["cnn", "mlp", "cnn"]
    assert list(cfg.loss.teachers[0].channels) == [32, 64]  # conf/model/cnn.yaml, typed
    assert cfg.loss.teachers[1].dropout == 0.0


def test_a_teacher_mapping_overrides_the_model_file_of_its_name():
    cfg = compose_cfg(["loss=multi_teacher", "model@teacher=cnn",
                       "loss.teachers=[{name:cnn,channels:[16]},{name:resnet,depth:14}]"])
    cnn, resnet = cfg.loss.teachers
    assert list(cnn.channels) == [16]
    assert cnn.fc == cfg.teacher.fc and cnn.dropout == cfg.teacher.dropout  # the rest from conf/model/cnn.yaml
    assert resnet.depth == 14 and list(resnet.widths) == [16, 16, 32, 64]  # no resnet.yaml: schema defaults


def test_teachers_can_reuse_the_teacher_and_student_groups_by_interpolation():
    cfg = compose_cfg(["loss=multi_teacher", "model@teacher=cnn", "loss.teachers=[${teacher},${student}]"])
    assert [t.name for t in cfg.loss.teachers] == ["cnn", "mlp"]


@pytest.mark.parametrize("override,key,hint", [
    (["loss.teachers=[cnn,mlp]", "loss.aggregate=weighted", "loss.weights=[1.0]"], "loss.weights", "one weight per teacher"),
    (["loss.teachers=[cnn]", "loss.weights=[1,2,3]"], "loss.weights", "one weight per teacher"),
    (["loss.aggregate=weighted"], "loss.weights", "one weight per teacher"),
    (["loss.weights=[0,0]"], "loss.weights", ">= 0 with a positive sum"),
    (["loss.aggregate=median"], "loss.aggregate", "mean, weighted, confidence"),
    (["loss.teachers=[cnn,nope]"], "loss.teachers[1]", "cnn"),
    (["loss.teachers=[]"], "loss.teachers", "at least one"),
    (["loss.teachers=[{name:mlp,hidden:[0]}]"], "loss.teachers[0].hidden", ">= 1"),
    (["loss.teachers=[{name:mlp,width:3}]"], "loss.teachers[0]", "hidden"),
])
def test_nonsense_is_refused_in_one_line(override, key, hint):
    with pytest.raises(ConfigError) as err:
        compose_cfg(["loss=multi_teacher", *override])
    msg = str(err.value)
    assert msg.startswith(key) and hint in msg and "\n" not in msg


@pytest.mark.parametrize("aggregate", ["mean", "weighted", "confidence"])
@pytest.mark.slow
def test_each_aggregate_runs_and_reports_teachers_ensemble_student_and_gain(store, aggregate):
    objective, run = run_experiment(["loss=multi_teacher", f"loss.aggregate={aggregate}",
                                     "loss.weights=[3,1]", *SMALL])
    assert run.info.status == "FINISHED"
    assert run.data.tags["teacher"].count("+") == 1
    m = run.data.metrics
    for key in ("teacher0_acc", "teacher1_acc", "teacher0_params", "teacher1_params", "ensemble_acc",
                "student_acc", "student_params", "baseline_acc", "kd_gain"):
        assert key in m, key
    assert m["teacher0_params"] > m["teacher1_params"] > m["student_params"]
    assert m["kd_gain"] == pytest.approx(m["student_acc"] - m["baseline_acc"])
    assert objective == m["student_acc"]
    client = mlflow.MlflowClient()
    for key in ("teacher0/test_acc", "teacher1/test_acc", "baseline/test_acc", "student/test_acc",
                "student/kd", "student/ce", "student/loss"):
        assert client.get_metric_history(run.info.run_id, key), key
    assert run.data.params["loss.aggregate"] == aggregate


def test_ensemble_teachers_preset_composes():
    cfg = compose_cfg(["experiment=ensemble_teachers"], fast=False)
    assert cfg.loss.name == "multi_teacher" and len(cfg.loss.teachers) == 3
    assert all(t.name == "cnn" and list(t.channels) == [16, 32] for t in cfg.loss.teachers)
    assert cfg.trainer.teacher_epochs == 5
