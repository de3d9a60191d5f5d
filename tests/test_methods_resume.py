"""kill -9, then the same command: the methods with trainable parts or a stage of their own (CC's
embeddings, OFD's connectors and margins, ReviewKD's fusion modules, FT's paraphraser stage and
its student phase, AB's initialisation stage) resume to the metrics of an uninterrupted run, epoch
by epoch. (VID: tests/test_methods_relational_cli.py; CRD: tests/test_methods_crd.py; FSP's stage:
tests/test_methods_stages.py; FitNets: tests/test_rerun.py.)

One CIFAR-style ResNet pair on a slice of the embedded data, two epochs per phase; each case kills
a run as soon as the named phase has written its first checkpoint, so the resumed run must restore
that phase's models, the method's parts and the optimiser mid-way."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import mlflow
import pytest
import torch

from conftest import FAST
from helpers import finish, runs_of, sqlite_uri, start_kdexp

pytestmark = pytest.mark.slow

# A resnet teacher (OFD and AB take the margin / pre-ReLU output of its blocks) and a narrower resnet student.
PAIR = ["model@teacher=resnet8", "model@student=resnet8", "student.widths=[8,8,16,32]",
        "trainer.fail_at_chance=false"]
BASE = [*FAST, *PAIR, "data.limit_train=256", "trainer.epochs=2", "trainer.baseline=false",
        "tracking.log_model=false", "loss.alpha=1"]

# method: (its overrides, {phase to kill a run in: what its checkpoint must hold}); a key of the
# method's parts (`parts.hint`), or a model the phase trains (a stage's `models`) as "models:<name>".
CASES = {
    "cc": (["hint=cc"], {"student": {"embed_s.weight", "embed_t.weight"}}),
    "ofd": (["hint=ofd"], {"student": {"connectors.0.0.weight", "connectors.0.1.running_mean", "margin0"}}),
    "reviewkd": (["hint=reviewkd", "hint.warmup=2"],
                 {"student": {"abfs.0.conv1.0.weight", "abfs.0.att_conv.0.weight"}}),
    "ft": (["hint=ft", "hint.init_epochs=2"], {"ft_paraphraser": {"models:paraphraser"},
                                               "student": {"paraphraser.encoder.0.weight", "translator.0.weight"}}),
    "ab": (["hint=ab", "hint.init_epochs=2"], {"ab_init": {"models:student", "models:connectors"}}),
}


def _holds(saved: dict) -> set[str]:
    return set(saved.get("parts", {}).get("hint", {})) | {f"models:{name}" for name in saved["models"]}


def _checkpoint(folder: Path, phase: str) -> Path | None:
    return next(folder.glob(f"outputs/checkpoints/*/*/{phase}.pt"), None)


def _kill_at_first_checkpoint(args: list[str], folder: Path, phase: str, timeout: float = 300) -> dict:
    """Start `kdexp ARGS` in `folder`, SIGKILL it once `phase` has written a checkpoint; that checkpoint."""
    victim = start_kdexp(args, folder)
    deadline = time.time() + timeout
    while _checkpoint(folder, phase) is None:
        assert victim.poll() is None, victim.stdout.read()
        assert time.time() < deadline, f"no {phase} checkpoint in time"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    return torch.load(_checkpoint(folder, phase), weights_only=True)


def _histories(folder: Path) -> dict[str, set[tuple[int, float]]]:
    """Every per-phase metric of the folder's one run, as its set of (step, value) pairs (a teacher
    loaded from the model store logs its history again: the same pairs)."""
    [run] = runs_of(folder)
    assert run.info.status == "FINISHED"
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri(folder))
    return {key: {(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)}
            for key in run.data.metrics if "/" in key and not key.endswith("seconds")}


@pytest.mark.parametrize("method", CASES)
def test_a_run_killed_mid_phase_resumes_to_the_uninterrupted_metrics(tmp_path, method):
    overrides, phases = CASES[method]
    args = [*BASE, *overrides]
    (tmp_path / "reference").mkdir()
    finish(start_kdexp(args, tmp_path / "reference"))
    reference = _histories(tmp_path / "reference")
    assert {f"{phase}/loss" for phase in phases} <= set(reference)
    for phase, parts in phases.items():
        crash = tmp_path / f"crash_{phase}"
        crash.mkdir()
        saved = _kill_at_first_checkpoint(args, crash, phase)
        assert saved["epoch"] < 2, phase  # killed mid-phase, not after it
        assert parts <= _holds(saved), phase
        assert "resuming MLflow run" in finish(start_kdexp(args, crash))
        assert _histories(crash) == reference, phase
