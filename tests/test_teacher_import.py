"""Bring your own teacher (issue 16): `teacher.checkpoint` from a file or an MLflow model, the
published CIFAR teachers' module layout, `kdexp-export`, and one-line refusals before training."""

import collections

import mlflow
import pytest
import torch

from conftest import FAST, compose_cfg, run_experiment
from helpers import kdexp
from kdexp.models import factory as models_mod
from kdexp.config.checks import ConfigError
from kdexp.cli.export import export
from kdexp.run.teacher_import import check_checkpoints, fitted, read_state

CIFAR = (3, 32, 32)


def benchmark_layout(depth: int, widths: list[int], num_classes: int = 100) -> dict:
    """A state dict named and shaped as the CIFAR-100 KD benchmark code saves its ResNets
    (conv1, bn1, layerS.B.conv1/bn1/conv2/bn2, layerS.B.downsample.0/1, fc), built from that
    layout's description, not from kdexp's model; every tensor distinct so misplacements show."""
    generator = torch.Generator().manual_seed(0)
    state = collections.OrderedDict()

    def conv(name, cout, cin, k):
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=generator)

    def bn(name, c):
        for stat in ("weight", "bias", "running_mean"):
            state[f"{name}.{stat}"] = torch.randn(c, generator=generator)
        state[f"{name}.running_var"] = torch.rand(c, generator=generator) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("conv1", widths[0], 3, 3)
    bn("bn1", widths[0])
    cin = widths[0]
    for s, cout in enumerate(widths[1:], start=1):
        for b in range((depth - 2) // 6):
            prefix = f"layer{s}.{b}"
            conv(f"{prefix}.conv1", cout, cin, 3)
            bn(f"{prefix}.bn1", cout)
            conv(f"{prefix}.conv2", cout, cout, 3)
            bn(f"{prefix}.bn2", cout)
            if b == 0 and (s > 1 or cin != cout):
                conv(f"{prefix}.downsample.0", cout, cin, 1)
                bn(f"{prefix}.downsample.1", cout)
            cin = cout
    state["fc.weight"] = torch.randn(num_classes, cin, generator=generator)
    state["fc.bias"] = torch.randn(num_classes, generator=generator)
    return state


@pytest.mark.parametrize("arch, depth, widths", [("resnet8x4", 8, [32, 64, 128, 256]),
                                                 ("resnet32x4", 32, [32, 64, 128, 256]),
                                                 ("resnet20", 20, [16, 16, 32, 64])])
def test_a_checkpoint_in_the_benchmark_layout_loads_into_the_cifar_resnets(tmp_path, arch, depth, widths):
    state = benchmark_layout(depth, widths)
    torch.save({"model": state, "epoch": 240, "accuracy": 79.4}, tmp_path / "ckpt_epoch_240.pth")
    model_cfg = compose_cfg([f"model@teacher={arch}"]).teacher
    model = models_mod.build(model_cfg, CIFAR, 100, 0)
    model.load_state_dict(fitted(read_state(str(tmp_path / "ckpt_epoch_240.pth"), "k"), model, model_cfg, "k", "f"))
    loaded = model.state_dict()
    assert torch.equal(loaded["stem.0.weight"], state["conv1.weight"])
    assert torch.equal(loaded["stem.1.running_var"], state["bn1.running_var"])
    assert torch.equal(loaded["stages.1.0.shortcut.0.weight"], state["layer2.0.downsample.0.weight"])
    assert torch.equal(loaded["stages.2.0.conv2.weight"], state["layer3.0.conv2.weight"])
    assert torch.equal(model.head[-1].weight, state["fc.weight"])
    assert len(loaded) == len(state)


def test_a_benchmark_checkpoint_of_another_depth_is_refused_naming_keys_and_shapes():
    model_cfg = compose_cfg(["model@teacher=resnet32x4"]).teacher
    model = models_mod.build(model_cfg, CIFAR, 100, 0)
    with pytest.raises(ConfigError, match=r"does not fit resnet32x4 \(missing keys: stages\.0\.1\..*"):
        fitted(benchmark_layout(8, [32, 64, 128, 256]), model, model_cfg, "teacher.checkpoint", "r8.pth")
    with pytest.raises(ConfigError, match=r"first shape mismatch: stem\.0\.weight is \[16, 3, 3, 3\] in the file, "
                                          r"\[32, 3, 3, 3\] in the model"):
        fitted(benchmark_layout(32, [16, 16, 32, 64]), model, model_cfg, "teacher.checkpoint", "r32.pth")


def _refusal(tmp_path, overrides) -> str:
    cfg = compose_cfg(overrides)
    with pytest.raises(ConfigError) as err:
        check_checkpoints(cfg, (1, 28, 28), 10)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bad_checkpoints_are_one_line_refusals(tmp_path):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module, not a state dict
    torch.save({"w": torch.zeros(3)}, tmp_path / "other.pt")
    assert "no such file" in _refusal(tmp_path, [f"teacher.checkpoint={tmp_path}/missing.pt"])
    assert "not a torch checkpoint" in _refusal(tmp_path, [f"teacher.checkpoint={tmp_path}/text.pt"])
    assert "kdexp never unpickles code" in _refusal(tmp_path, [f"teacher.checkpoint={tmp_path}/module.pt"])
    other = _refusal(tmp_path, [f"teacher.checkpoint={tmp_path}/other.pt"])
    assert "does not fit cnn" in other and "missing keys: head." in other and "unexpected keys: w" in other
    assert "cannot load that MLflow model" in _refusal(tmp_path, ["teacher.checkpoint=runs:/0123456789abcdef/student"])
    assert "only teachers are imported" in _refusal(tmp_path, [f"student.checkpoint={tmp_path}/other.pt"])
    peer = _refusal(tmp_path, ["loss=online", f"loss.peers=[mlp,{{name: mlp, checkpoint: {tmp_path}/other.pt}}]"])
    assert peer.startswith("loss.peers[1].checkpoint=") and "only teachers are imported" in peer


def test_online_peers_without_checkpoints_pass_the_checkpoint_check():
    assert check_checkpoints(compose_cfg(["loss=online"]), (1, 28, 28), 10) == {}


def test_a_state_dict_wrapped_under_state_dict_and_saved_from_data_parallel_loads(tmp_path):
    model_cfg = compose_cfg([]).teacher
    model = models_mod.build(model_cfg, (1, 28, 28), 10, 3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "dp.pt")
    state = fitted(read_state(str(tmp_path / "dp.pt"), "k"), model, model_cfg, "k", "dp.pt")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_round_trip_export_then_distil_from_the_file_reproduces_the_stored_teacher(store, tmp_path):
    common = ["tracking.log_model=false"]
    _, trained = run_experiment(common)
    path = tmp_path / "exported.pt"
    export(trained.info.run_id, path, tracking_uri=store)
    _, imported = run_experiment([*common, f"teacher.checkpoint={path}"])
    tags = imported.data.tags
    assert tags["kdexp.teacher.source"] == "imported" and tags["kdexp.teacher.checkpoint"] == str(path)
    assert imported.data.metrics["teacher_acc"] == trained.data.metrics["teacher_acc"]
    assert imported.data.metrics["student_acc"] == trained.data.metrics["student_acc"]
    assert "teacher/loss" not in imported.data.metrics  # no teacher was trained
    entry = mlflow.get_run(tags["kdexp.teacher.lineage"]).data.tags
    assert entry["kdexp.imported_from"] == str(path) and len(entry["kdexp.imported.sha256"]) == 64


@pytest.mark.slow
def test_a_two_job_sweep_imports_the_checkpoint_once_and_the_cli_refuses_bad_ones(tmp_path):
    model = models_mod.build(compose_cfg([]).teacher, (1, 28, 28), 10, 0)
    torch.save(model.state_dict(), tmp_path / "t.pt")
    # An untrained teacher is at chance level, which kdexp refuses unless told otherwise.
    args = [*FAST, "data.limit_train=300", "tracking.log_model=false", "trainer.fail_at_chance=false",
            f"teacher.checkpoint={tmp_path}/t.pt"]
    kdexp(["-m", "seed=1,2", *args], tmp_path, check=True)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    jobs = [r for r in mlflow.search_runs(experiment_names=["kdexp"], output_format="list")
            if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["kdexp.teacher.source"] for r in jobs) == ["imported", "store"]
    assert len({r.data.tags["kdexp.teacher.lineage"] for r in jobs}) == 1
    entries = [r for r in mlflow.search_runs(experiment_names=["kdexp-store"], output_format="list")
               if "kdexp.imported_from" in r.data.tags]
    assert len(entries) == 1
    refused = kdexp([*args[:-1], f"teacher.checkpoint={tmp_path}/missing.pt"], tmp_path)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "teacher.checkpoint=" in refused.stderr and "no such file" in refused.stderr


@pytest.mark.slow
def test_a_logged_student_is_the_next_teacher_through_its_mlflow_uri_and_exports(store, tmp_path):
    _, first = run_experiment([])  # logs the student as an MLflow model (tracking.log_model=true)
    uri = first.data.tags["student_model_uri"]
    _, second = run_experiment(["tracking.log_model=false", "model@teacher=mlp", f"teacher.checkpoint={uri}"])
    assert second.data.tags["kdexp.teacher.source"] == "imported"
    assert second.data.metrics["teacher_acc"] == first.data.metrics["student_acc"]
    exported = kdexp([first.info.run_id, str(tmp_path / "student.pt"), "--role", "student"], tmp_path,
                     module="kdexp.cli.export", check=True)
    assert "wrote model" in exported.stdout
    state = torch.load(tmp_path / "student.pt", weights_only=True)
    assert set(state) == set(models_mod.build(compose_cfg([]).student, (1, 28, 28), 10, 0).state_dict())


@pytest.mark.parametrize("family", ["self", "online", "none", "multi_teacher"])
def test_a_teacher_checkpoint_where_the_family_has_no_teacher_is_refused(family):
    refusal = rf"teacher.checkpoint='t.pt' is not allowed; loss={family} has no `teacher` to import"
    with pytest.raises(ConfigError, match=refusal):
        compose_cfg([f"loss={family}", "teacher.checkpoint=t.pt"])


def test_new_weights_under_the_same_path_are_another_run(tmp_path):
    from kdexp.config.identity import run_key

    cfg = compose_cfg([f"teacher.checkpoint={tmp_path}/t.pt"])
    keys = set()
    for seed in (0, 1):
        torch.save(models_mod.build(cfg.teacher, (1, 28, 28), 10, seed).state_dict(), tmp_path / "t.pt")
        keys.add(run_key(cfg, "cpu", check_checkpoints(cfg, (1, 28, 28), 10)))
    assert len(keys) == 2
    assert run_key(compose_cfg([]), "cpu", check_checkpoints(compose_cfg([]), (1, 28, 28), 10)) == \
        run_key(compose_cfg([]), "cpu")


@pytest.mark.slow
def test_each_teacher_of_multi_teacher_takes_its_own_checkpoint(store, tmp_path):
    torch.save(models_mod.build(compose_cfg([]).teacher, (1, 28, 28), 10, 0).state_dict(), tmp_path / "t.pt")
    _, run = run_experiment(["loss=multi_teacher", f"loss.teachers=[{{name: cnn, checkpoint: {tmp_path}/t.pt}}, mlp]",
                             "trainer.fail_at_chance=false", "tracking.log_model=false"])
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["kdexp.teacher0.source"] == "imported" and tags["kdexp.teacher1.source"] == "trained"
    assert tags["kdexp.teacher0.checkpoint"] == f"{tmp_path}/t.pt"
    assert "teacher0/loss" not in metrics and "teacher1/loss" in metrics


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_file(tmp_path):
    """A teacher file with NaN weights is refused before any training, naming the file, rather than
    failing later with advice about optim.lr and trainer.teacher_epochs."""
    cfg = compose_cfg([])
    model = models_mod.build(cfg.teacher, (1, 28, 28), 10, 0)
    state = model.state_dict()
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first].clone()
    state[first].view(-1)[:3] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    message = _refusal(tmp_path, [f"teacher.checkpoint={tmp_path}/nan.pt"])
    assert message.startswith(f"teacher.checkpoint={tmp_path}/nan.pt: the file's weights are not finite (3 NaN/inf")
    assert first in message and "optim.lr" not in message
