"""loss=online: peers by name, the config checks, one training step's gradients, dml / ensemble end to end."""

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, run_experiment
from kdexp.models import factory as models
from kdexp.config.checks import ConfigError
from kdexp.distill.functional import mutual

SMALL = ["loss.peers=[{name:mlp,hidden:[64]},{name:mlp,hidden:[32]},{name:mlp,hidden:[16]}]",
         "tracking.log_model=false"]


def test_peers_are_resolved_by_name():
    cfg = compose_cfg(["loss=online", "loss.peers=[cnn,mlp]"])
    assert [p.name for p in cfg.loss.peers] == ["cnn", "mlp"] and cfg.loss.mode == "dml"


@pytest.mark.parametrize("override,key,hint", [
    (["loss.peers=[mlp]"], "loss.peers", "at least two peers"),
    (["loss.peers=[]"], "loss.peers", "at least two peers"),
    (["loss.mode=byot"], "loss.mode", "dml, ensemble"),
    (["loss.peers=[mlp,resnet999]"], "loss.peers[1]", "mlp"),
    (["loss.alpha=2"], "loss.alpha", "[0, 1]"),
])
def test_nonsense_is_refused_in_one_line(override, key, hint):
    with pytest.raises(ConfigError) as err:
        compose_cfg(["loss=online", *override])
    msg = str(err.value)
    assert msg.startswith(key) and hint in msg and "\n" not in msg


def test_one_step_on_the_summed_loss_moves_each_peer_as_its_own_loss_would():
    cfg = OmegaConf.create({"name": "mlp", "hidden": [16], "dropout": 0.0})
    peers = [models.build(cfg, (1, 28, 28), 10, seed=s) for s in (0, 1)]
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    terms = mutual([p(x) for p in peers], y, 3.0, 0.5, "dml")
    total = torch.autograd.grad(terms["loss"], list(peers[0].parameters()), retain_graph=True)
    own = torch.autograd.grad(terms["peer0_loss"], list(peers[0].parameters()), retain_graph=True)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(total, own))
    other = torch.autograd.grad(terms["peer1_loss"], list(peers[0].parameters()), allow_unused=True)
    assert all(g is None for g in other)


@pytest.mark.parametrize("mode", ["dml", "ensemble"])
@pytest.mark.slow
def test_peers_train_together_and_report_each_peer_ensemble_and_gain(store, mode):
    objective, run = run_experiment(["loss=online", f"loss.mode={mode}", *SMALL])
    assert run.info.status == "FINISHED"
    assert run.data.tags["teacher"] == "(online peers)" and run.data.tags["student"].count("+") == 2
    m = run.data.metrics
    for i in range(3):
        for key in (f"peer{i}_acc", f"peer{i}_params", f"peer{i}_baseline_acc", f"peer{i}_kd_gain"):
            assert key in m, key
        assert m[f"peer{i}_kd_gain"] == pytest.approx(m[f"peer{i}_acc"] - m[f"peer{i}_baseline_acc"])
    assert m["peer0_params"] > m["peer1_params"] > m["peer2_params"]
    assert "ensemble_acc" in m
    # metrics are logged rounded to 4 decimals; the objective is returned as computed
    assert objective == pytest.approx(m["mean_acc"], abs=1e-4)
    assert m["mean_acc"] == pytest.approx(sum(m[f"peer{i}_acc"] for i in range(3)) / 3, abs=1e-4)
    assert m["kd_gain"] == pytest.approx(sum(m[f"peer{i}_kd_gain"] for i in range(3)) / 3)
    client = mlflow.MlflowClient()
    for key in ("peer0/test_acc", "peer2/test_acc", "peer1_baseline/test_acc", "online/loss",
                "online/peer0_kd", "online/peer2_ce"):
        assert [h.step for h in client.get_metric_history(run.info.run_id, key)] == [1], key


@pytest.mark.slow
def test_online_with_alpha_one_equals_the_peers_trained_alone(store):
    # alpha = 1: no distillation; peer0 shares its baseline's init and batch order.
    _, run = run_experiment(["loss=online", "loss.alpha=1", *SMALL])
    assert run.data.metrics["peer0_kd_gain"] == pytest.approx(0.0, abs=1e-9)


def test_dml_preset_composes():
    cfg = compose_cfg(["experiment=dml"], fast=False)
    assert cfg.loss.name == "online" and cfg.loss.mode == "dml" and len(cfg.loss.peers) == 2
    assert cfg.data.augment
