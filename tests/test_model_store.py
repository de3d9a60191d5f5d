"""The model store: keys, hits and misses, and teachers trained once across runs."""

import mlflow
import pytest
import torch

from conftest import compose_cfg, run_experiment
from kdexp.config.identity import key_for
from kdexp.data import memory as data
from kdexp.run.context import Context


class _Asked(Exception):
    """Raised by `_KeyOnly` with the key a model was asked for."""


class _KeyOnly:
    """A model store that stops at the first key it is asked for: nothing is trained or stored."""

    def entry(self, digest, payload, label):
        raise _Asked(digest)


def _key(overrides=()):
    """The model-store key of the teacher of a run configured by `overrides`, taken where the run
    takes it (`Context.teacher`), from the whole config: every section the cases vary reaches it.
    The data are two blank MNIST-shaped images; the key is made from the config alone."""
    cfg = compose_cfg(list(overrides))
    blank = data.Split(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    ctx = Context(cfg, data.MemorySource(data.Dataset("blank", blank, blank, None, 10), cfg.data, torch.device("cpu")), None, torch.device("cpu"), store=_KeyOnly())
    with pytest.raises(_Asked) as asked:
        ctx.teacher(cfg.teacher)
    return asked.value.args[0]


@pytest.mark.parametrize("override", [
    "teacher.channels=[16,32]", "data.augment=true", "data.max_shift=1", "optim.lr=0.01",
    "trainer.teacher_epochs=2", "data.limit_train=256", "data.split_seed=1", "data.batch_size=32", "seed=1",
])
def test_key_changes_with_what_determines_the_model(override):
    assert _key([override]) != _key()


@pytest.mark.parametrize("override", [
    "loss.temperature=8", "loss.alpha=0.9", "student.hidden=[64]", "data.eval_batch_size=100",
    "trainer.progress=true", "tracking.experiment=other", "trainer.epochs=3",
])
def test_key_ignores_what_does_not_change_the_model(override):
    assert _key([override]) == _key()


def test_key_changes_with_seed_and_epochs_arguments():
    cfg = compose_cfg()
    base = key_for(cfg.teacher, cfg.data, cfg.optim, 1, True, 7)[0]
    assert key_for(cfg.teacher, cfg.data, cfg.optim, 1, True, 8)[0] != base
    assert key_for(cfg.teacher, cfg.data, cfg.optim, 2, True, 7)[0] != base
    assert key_for(cfg.teacher, cfg.data, cfg.optim, 1, False, 7)[0] != base


def _store_entries(label_prefix):
    runs = mlflow.search_runs(experiment_names=["kdexp-store"], output_format="list")
    return [r for r in runs if r.data.tags["kdexp.label"].startswith(label_prefix)]


@pytest.mark.slow
def test_teacher_and_baseline_trained_once_then_loaded(store):
    _, first = run_experiment(["loss.temperature=2", "tracking.log_model=false"])
    _, second = run_experiment(["loss.temperature=8", "tracking.log_model=false"])
    assert len(_store_entries("teacher")) == 1 and len(_store_entries("baseline")) == 1
    assert first.data.tags["kdexp.teacher.source"] == "trained"
    assert second.data.tags["kdexp.teacher.source"] == "store"
    assert second.data.tags["kdexp.baseline.source"] == "store"
    assert first.data.tags["kdexp.teacher.lineage"] == second.data.tags["kdexp.teacher.lineage"]
    # Loaded models are the trained ones: same accuracy, and the curve is in the child run too.
    assert first.data.metrics["teacher_acc"] == second.data.metrics["teacher_acc"]
    assert first.data.metrics["baseline_acc"] == second.data.metrics["baseline_acc"]
    history = mlflow.MlflowClient().get_metric_history(second.info.run_id, "teacher/test_acc")
    assert len(history) == 1


@pytest.mark.slow
def test_reuse_false_retrains(store):
    run_experiment(["tracking.log_model=false"])
    _, again = run_experiment(["tracking.log_model=false", "store.reuse=false", "loss.temperature=5"])
    assert again.data.tags["kdexp.teacher.source"] == "trained"
    assert len(_store_entries("teacher")) == 2


@pytest.mark.slow
def test_changed_teacher_is_a_miss(store):
    run_experiment(["tracking.log_model=false"])
    _, other = run_experiment(["tracking.log_model=false", "teacher.fc=64"])
    assert other.data.tags["kdexp.teacher.source"] == "trained"
    assert other.data.tags["kdexp.baseline.source"] == "store"


@pytest.mark.slow
def test_teacher_logits_computed_once_and_shared_by_later_students(store):
    """Unaugmented students of a sweep share one pass of the teacher over the training split; the
    stored logits are the computed ones (same student as a run that computes its own)."""
    quiet = ["tracking.log_model=false", "data.augment=false", "trainer.baseline=false"]
    _, first = run_experiment([*quiet, "loss.temperature=2"])
    _, second = run_experiment([*quiet, "loss.temperature=8"])
    assert first.data.tags["kdexp.teacher.logits"] == "computed"
    assert second.data.tags["kdexp.teacher.logits"] == "store"
    assert len(_store_entries("logits of teacher")) == 1
    _, alone = run_experiment([*quiet, "loss.temperature=8", "store.reuse=false", "trainer.rerun=force"])
    assert alone.data.tags["kdexp.teacher.logits"] == "computed"
    assert alone.data.metrics["student_acc"] == second.data.metrics["student_acc"]
    assert alone.data.metrics["student/loss"] == second.data.metrics["student/loss"]


@pytest.mark.slow
def test_augmented_students_take_the_teacher_per_batch_and_store_no_logits(store):
    _, run = run_experiment(["tracking.log_model=false", "data.augment=true", "trainer.baseline=false"])
    assert "kdexp.teacher.logits" not in run.data.tags
    assert _store_entries("logits of") == []
