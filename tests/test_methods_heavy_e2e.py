"""The methods with trainable parts and state (kdexp/distill/methods/crd.py, reviewkd.py, ofd.py) end to end on
the embedded data (1 epoch, a slice: slow): FINISHED, a finite KD gain, the method named in the run.
CRD alone, and its resume after kill -9, are in tests/test_methods_crd.py."""

import math

import pytest

from conftest import run_experiment

SMALL = ["tracking.log_model=false", "data.limit_train=128"]
PAIR = ["model@student=cnn", "student.channels=[8,16]"]

RUNS = {
    "crd+kd": ["hint=crd", "hint.negatives=64", "loss.alpha=0.5", "hint.weight=0.4"],
    "reviewkd": ["hint=reviewkd", "loss.alpha=1", *PAIR],
    "ofd": ["hint=ofd", "loss.alpha=1", "model@teacher=resnet8", "model@student=resnet8",
            "student.widths=[8,8,16,32]", "trainer.fail_at_chance=false"],  # a resnet teacher of 1 epoch on 128 images
}


@pytest.mark.slow
@pytest.mark.parametrize("overrides", RUNS.values(), ids=RUNS.keys())
def test_each_heavy_method_finishes_with_a_finite_kd_gain(store, overrides):
    _, run = run_experiment([*SMALL, *overrides])
    assert run.info.status == "FINISHED"
    assert math.isfinite(run.data.metrics["kd_gain"]) and math.isfinite(run.data.metrics["student/hint"])
    assert run.data.params["hint.name"] == overrides[0].removeprefix("hint=")
