"""Re-runs: finished work is skipped, interrupted work resumes, bad checkpoints are refused."""

import os
from pathlib import Path

import mlflow
import pytest
import torch

from conftest import FAST, compose_cfg
from helpers import finish, reference_and_killed, runs_of, start_kdexp, student_checkpoint
from kdexp.run import experiment
from kdexp.run.checkpoints import CheckpointError, Checkpoints
from kdexp.config.identity import run_key


@pytest.mark.slow
def test_rerun_of_a_finished_config_is_skipped(store):
    cfg = compose_cfg(["tracking.log_model=false"])
    first = experiment.run(cfg, [])
    assert experiment.run(cfg, []) == first
    assert len(runs_of()) == 1


@pytest.mark.slow
def test_force_runs_again(store):
    cfg = compose_cfg(["tracking.log_model=false", "trainer.rerun=force"])
    experiment.run(cfg, [])
    experiment.run(cfg, [])
    assert len(runs_of()) == 2


def test_run_key_ignores_presentation_settings_only():
    base = run_key(compose_cfg())
    assert run_key(compose_cfg(["trainer.progress=true", "trainer.threads=1"])) == base
    assert run_key(compose_cfg(["loss.temperature=9"])) != base
    assert run_key(compose_cfg(["seed=1"])) != base


@pytest.mark.slow
def test_auto_device_is_the_same_run_as_the_device_it_picks(store):
    assert run_key(compose_cfg(["trainer.device=auto"]), "cpu") == run_key(compose_cfg(), "cpu")
    experiment.run(compose_cfg(["tracking.log_model=false"]), [])
    experiment.run(compose_cfg(["tracking.log_model=false", "trainer.device=auto"]), [])
    # Without a GPU, auto is cpu: the second run is skipped as already FINISHED; with one, it is new.
    assert len(runs_of()) == (1 if experiment.resolve_device("auto").type == "cpu" else 2)


def test_tampered_checkpoint_is_refused_with_one_line(tmp_path):
    ckpts = Checkpoints(tmp_path, "key", "run")
    ckpts.save("student", {"epoch": 1})
    assert ckpts.load("student") == {"epoch": 1}
    ckpts.path("student").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError) as err:
        ckpts.load("student")
    assert str(ckpts.path("student")) in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_with_code_is_refused(tmp_path):
    """weights_only loading: a pickle that would run code is an error, not an execution."""
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    ckpts = Checkpoints(tmp_path, "key", "run")
    ckpts.folder.mkdir(parents=True)
    torch.save({"epoch": Evil()}, ckpts.path("student"))
    with pytest.raises(CheckpointError):
        ckpts.load("student")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_non_finite_loss_stops_with_phase_epoch_and_step(store):
    from kdexp.run.loop import NonFiniteLoss

    # A learning rate this large sends the weights to inf within a couple of steps.
    cfg = compose_cfg(["tracking.log_model=false", "optim.lr=1e30"])
    with pytest.raises(NonFiniteLoss, match=r"in phase 'teacher' at epoch 1, step \d+;"):
        experiment.run(cfg, [])
    assert runs_of()[0].info.status == "FAILED"


# Plain Hinton KD, and terms that own trainable parts (the FitNets connector, CTKD's temperature),
# which must be in the phase's checkpoints for the resumed run to be exact.
@pytest.mark.slow
@pytest.mark.parametrize("method, parts", [([], None), (["hint=fitnets", "hint.weight=1"], {"hint"}),
                                           (["kd=ctkd"], {"kd"})], ids=["hinton", "fitnets", "ctkd"])
def test_kill_9_then_same_command_resumes_to_identical_metrics(tmp_path, method, parts):
    args = [*FAST, *method, "data.limit_train=1000", "trainer.epochs=4", "tracking.log_model=false"]
    reference_dir, crash_dir = reference_and_killed(args, tmp_path)
    if parts is not None:
        saved = torch.load(student_checkpoint(crash_dir), weights_only=True)
        assert saved["epoch"] < 4 and set(saved["parts"]) == parts

    assert "resuming MLflow run" in finish(start_kdexp(args, crash_dir), timeout=300)

    reference = runs_of(reference_dir)
    crashed = runs_of(crash_dir)
    assert len(reference) == 1 and len(crashed) == 1
    assert crashed[0].info.status == "FINISHED"
    keys = ("student_acc", "baseline_acc", "teacher_acc", "kd_gain")
    assert {k: crashed[0].data.metrics[k] for k in keys} == {k: reference[0].data.metrics[k] for k in keys}
    history = [k for k in reference[0].data.metrics if k.startswith("student/")]
    assert history and {k: crashed[0].data.metrics[k] for k in history} == \
        {k: reference[0].data.metrics[k] for k in history}
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(crashed[0].info.run_id, "student/test_acc")]
    assert sorted(set(steps)) == [1, 2, 3, 4]
