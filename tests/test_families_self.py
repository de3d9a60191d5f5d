"""loss=self: the multi-exit wrapper, its config checks, and byot / born-again end to end."""

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, run_experiment
from kdexp.models import factory as models
from kdexp.config.checks import ConfigError
from kdexp.distill.functional import self_distill
from kdexp.models.resnets import cifar_resnet

NO_MODEL = ["tracking.log_model=false"]


def build(**cfg):
    return models.build(OmegaConf.create(cfg), (1, 28, 28), 10, seed=0)


# --- the multi-exit wrapper ------------------------------------------------------------


@pytest.mark.parametrize("net,exits", [
    (lambda: build(name="mlp", hidden=[64, 32, 16], dropout=0.0), 3),
    (lambda: build(name="cnn", channels=[8, 16, 16], fc=32, dropout=0.0, batch_norm=True), 3),
    (lambda: cifar_resnet(8, [8, 8, 16, 32], 1, 10), 3),  # any StagedNet, not only mlp / cnn
])
def test_multi_exit_has_an_exit_per_stage_with_matching_features(net, exits):
    base = net()
    me = models.multi_exit(base, (1, 28, 28), 10, seed=1)
    assert me.num_exits == exits
    logits, feats = me.outputs(torch.randn(4, 1, 28, 28))
    assert [z.shape for z in logits] == [(4, 10)] * exits
    assert len({f.shape for f in feats}) == 1  # every exit's features have the deepest's shape
    me.eval()
    assert torch.allclose(me(torch.ones(2, 1, 28, 28)), base.eval()(torch.ones(2, 1, 28, 28)))


def test_exit_nets_are_standalone_models_sharing_weights_with_params_up_to_the_exit():
    base = build(name="mlp", hidden=[64, 32, 16], dropout=0.0)
    me = models.multi_exit(base, (1, 28, 28), 10, seed=1)
    x = torch.randn(3, 1, 28, 28)
    logits, _ = me.outputs(x)
    for i in range(1, 4):
        assert torch.allclose(me.exit_net(i)(x), logits[i - 1])
    # exit1: flatten -> 784x64 stage -> bottleneck 64->16 -> classifier 16->10
    assert models.count_params(me.exit_net(1)) == (784 * 64 + 64) + (64 * 16 + 16) + (16 * 10 + 10)
    assert models.count_params(me.exit_net(3)) == models.count_params(base)
    assert me.exit_net(1).stages[0] is base.stages[0]


def test_exit_heads_come_from_their_seed_alone():
    a = models.multi_exit(build(name="mlp", hidden=[32, 16], dropout=0.0), (1, 28, 28), 10, seed=5)
    b = models.multi_exit(build(name="mlp", hidden=[32, 16], dropout=0.0), (1, 28, 28), 10, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_a_single_stage_net_cannot_be_multi_exit():
    with pytest.raises(ConfigError, match="at least two stages"):
        models.multi_exit(build(name="mlp", hidden=[32], dropout=0.0), (1, 28, 28), 10, seed=0)


def test_kd_reaches_shallow_exits_and_the_trunk_but_not_the_deepest_head():
    me = models.multi_exit(build(name="mlp", hidden=[32, 16], dropout=0.0), (1, 28, 28), 10, seed=0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    logits, feats = me.outputs(x)
    terms = self_distill(logits, y, 3.0, 0.0, feats, 1.0)  # alpha=0: shallow exits learn from KD + features
    kd_only = terms["exit1_kd"] + terms["exit1_feat"]
    grads = torch.autograd.grad(kd_only, list(me.parameters()), allow_unused=True)
    by_name = dict(zip((n for n, _ in me.named_parameters()), grads))
    assert all(by_name[n] is None for n in by_name if n.startswith("net.head"))
    assert all(by_name[n] is None for n in by_name if n.startswith("net.stages.1"))  # the deepest's own stage
    assert by_name["exits.0.classifier.weight"] is not None
    assert by_name["net.stages.0.0.weight"] is not None  # the shared trunk learns from the deepest


# --- config ----------------------------------------------------------------------------


def test_loss_self_picks_a_multi_stage_student_and_keeps_temperature_alpha():
    cfg = compose_cfg(["loss=self"])
    assert cfg.loss.name == "self" and cfg.loss.mode == "byot"
    assert cfg.student.name == "cnn" and len(cfg.student.channels) >= 2
    assert cfg.loss.temperature > 0 and 0 <= cfg.loss.alpha <= 1
    assert compose_cfg(["loss=self", "model@student=mlp", "student.hidden=[64,32]"]).student.name == "mlp"


@pytest.mark.parametrize("override,key", [
    (["model@student=mlp", "student.hidden=[128]"], "student.hidden"),
    (["student.channels=[32]"], "student.channels"),
    (["loss.mode=nope"], "loss.mode"),
    (["loss.generations=0", "loss.mode=born_again"], "loss.generations"),
    (["loss.feature_weight=-1"], "loss.feature_weight"),
])
def test_nonsense_is_refused_in_one_line(override, key):
    with pytest.raises(ConfigError) as err:
        compose_cfg(["loss=self", *override])
    msg = str(err.value)
    assert msg.startswith(key) and "\n" not in msg


def test_born_again_accepts_a_single_stage_student():
    cfg = compose_cfg(["loss=self", "loss.mode=born_again", "model@student=mlp", "student.hidden=[32]"])
    assert cfg.loss.mode == "born_again"


# --- end to end ------------------------------------------------------------------------


@pytest.mark.slow
def test_byot_reports_every_exit_and_its_gain(store):
    objective, run = run_experiment(["loss=self", "student.channels=[8,16,16]", "student.fc=32",
                                     "loss.feature_weight=0.1"])
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert m["exits"] == 3
    for i in (1, 2, 3):
        for key in (f"exit{i}_acc", f"exit{i}_params", f"exit{i}_baseline_acc", f"exit{i}_kd_gain"):
            assert key in m, key
        assert m[f"exit{i}_kd_gain"] == pytest.approx(m[f"exit{i}_acc"] - m[f"exit{i}_baseline_acc"])
    assert m["exit1_params"] < m["exit2_params"] < m["exit3_params"]
    # metrics are logged rounded to 4 decimals; the objective is returned as computed
    assert objective == pytest.approx(m["mean_acc"], abs=1e-4)
    assert m["mean_acc"] == pytest.approx(sum(m[f"exit{i}_acc"] for i in (1, 2, 3)) / 3, abs=1e-4)
    assert m["kd_gain"] == pytest.approx(m["mean_acc"] - m["baseline_mean_acc"], abs=2e-4)
    client = mlflow.MlflowClient()
    for key in ("exit1/test_acc", "exit3/test_acc", "baseline_exit1/test_acc", "student/exit1_kd",
                "student/exit2_feat", "student/exit3_ce", "student/loss"):
        assert [h.step for h in client.get_metric_history(run.info.run_id, key)] == [1], key
    # every exit is logged as a model of its own
    x = torch.zeros(2, 1, 28, 28)
    for i in (1, 2, 3):
        assert mlflow.pytorch.load_model(run.data.tags[f"exit{i}_model_uri"])(x).shape == (2, 10)


@pytest.mark.slow
def test_byot_with_alpha_one_equals_its_baseline(store):
    _, run = run_experiment(["loss=self", "loss.alpha=1", "student.channels=[8,16]", *NO_MODEL])
    assert run.data.metrics["kd_gain"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow
def test_byot_sweep_trains_its_baseline_once(store):
    """The labels-only multi-exit baseline depends on nothing a T x alpha sweep changes: the second
    job loads it from the store, with the same exit accuracies and its curves logged again."""
    small = ["loss=self", "student.channels=[8,16]", *NO_MODEL]
    _, first = run_experiment([*small, "loss.alpha=0.3"])
    _, second = run_experiment([*small, "loss.alpha=0.7", "loss.temperature=2"])
    assert first.data.tags["kdexp.baseline.source"] == "trained"
    assert second.data.tags["kdexp.baseline.source"] == "store"
    assert first.data.tags["kdexp.baseline.lineage"] == second.data.tags["kdexp.baseline.lineage"]
    for key in ("exit1_baseline_acc", "exit2_baseline_acc", "baseline_mean_acc"):
        assert second.data.metrics[key] == first.data.metrics[key], key
    assert second.data.metrics["exit1_acc"] != first.data.metrics["exit1_acc"]  # the students differ
    client = mlflow.MlflowClient()
    for key in ("baseline_exit1/test_acc", "baseline_exit2/test_acc", "baseline/loss"):
        assert [h.step for h in client.get_metric_history(second.info.run_id, key)] == [1], key
    # ... but not with a plain cnn baseline of the same student, which is another model
    _, plain = run_experiment(["model@student=cnn", "student.channels=[8,16]", *NO_MODEL])
    assert plain.data.tags["kdexp.baseline.source"] == "trained"


@pytest.mark.slow
def test_born_again_reports_generations_and_their_ensemble(store):
    objective, run = run_experiment(["loss=self", "loss.mode=born_again", "loss.generations=2",
                                     "model@student=mlp", "student.hidden=[32]", *NO_MODEL])
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    for key in ("gen0_acc", "gen1_acc", "gen2_acc", "gen1_kd_gain", "gen2_kd_gain", "ensemble_acc",
                "student_acc", "baseline_acc", "kd_gain"):
        assert key in m, key
    assert m["gen2_kd_gain"] == pytest.approx(m["gen2_acc"] - m["gen0_acc"])
    assert objective == m["student_acc"] == m["gen2_acc"]
    client = mlflow.MlflowClient()
    for key in ("gen0/test_acc", "gen1/test_acc", "gen2/kd", "gen2/loss"):
        assert client.get_metric_history(run.info.run_id, key), key



@pytest.mark.parametrize("preset,mode", [("byot", "byot"), ("born_again", "born_again")])
def test_presets_compose(preset, mode):
    cfg = compose_cfg([f"experiment={preset}"], fast=False)
    assert cfg.loss.name == "self" and cfg.loss.mode == mode and cfg.student.name == "mlp"
    if mode == "byot":
        assert len(cfg.student.hidden) >= 2
