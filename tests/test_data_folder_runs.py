"""Whole runs on a streamed image folder (issue 24): kill -9 mid-run and the same command resumes to
the metrics of an uninterrupted run (the epoch order and every crop come from the run's seed), and a
sweep over loss.temperature trains its teacher once and shares it and its cached logits."""

from __future__ import annotations


import pytest

from helpers import finish, kdexp, reference_and_killed, runs_of, start_kdexp
from test_data_folder import GREY, write_digits

STREAM = ["data=imagefolder", *GREY, "data.in_memory=false", "data.batch_size=16", "trainer.progress=false",
          "trainer.teacher_epochs=1", "trainer.baseline=false", "tracking.log_model=false", "student.hidden=[32]"]


@pytest.mark.slow
def test_kill_9_mid_run_then_the_same_command_resumes_to_identical_metrics(tmp_path):
    root = write_digits(tmp_path / "digits", train=12, val=4)
    # Augmented students (RandomResizedCrop + flip drawn in 2 workers), so the teacher runs per batch.
    args = [*STREAM, f"data.root={root}", "data.augment=true", "data.workers=2", "trainer.epochs=3"]
    reference_dir, crash_dir = reference_and_killed(args, tmp_path, poll=0.02)
    assert "resuming MLflow run" in finish(start_kdexp(args, crash_dir), timeout=300)

    [reference], [crashed] = runs_of(reference_dir), runs_of(crash_dir)
    assert crashed.info.status == "FINISHED"
    curves = [k for k in reference.data.metrics if k.startswith(("student/", "teacher/"))] + ["student_acc"]
    assert {k: crashed.data.metrics[k] for k in curves} == {k: reference.data.metrics[k] for k in curves}


@pytest.mark.slow
def test_a_temperature_sweep_on_a_stream_trains_one_teacher_and_shares_its_logits(tmp_path):
    root = write_digits(tmp_path / "digits", train=12, val=4)
    result = kdexp(["-m", *STREAM, f"data.root={root}", "data.workers=1", "trainer.epochs=1",
                    "loss.temperature=2,4"], tmp_path, timeout=400, check=True)
    jobs = sorted((r for r in runs_of(tmp_path) if r.data.tags.get("kdexp.role") == "job"),
                  key=lambda r: r.data.params["loss.temperature"])
    assert [r.info.status for r in jobs] == ["FINISHED", "FINISHED"], result.stdout[-2000:]
    assert [r.data.tags["kdexp.teacher.source"] for r in jobs] == ["trained", "store"]
    assert [r.data.tags["kdexp.teacher.logits"] for r in jobs] == ["computed", "store"]  # unaugmented students
    assert jobs[0].data.metrics["student/loss"] != jobs[1].data.metrics["student/loss"]  # T=2 and T=4 did run
