"""One owner per setting (issue 21): a setting the chosen family and method ignore is refused on the
command line in one line naming the key to use, is not logged as a param, and does not enter the
run identity; a sweep is refused before any work only when no job of it reads the key."""

import mlflow
import pytest

from conftest import FAST, compose_cfg
from helpers import kdexp
from kdexp.config.checks import ConfigError
from kdexp.config.identity import run_key
from kdexp.config.owners import ignored_settings, override_keys, refuse_ignored
from kdexp.run.metadata import run_params


def refusal(job_overrides: list[list[str]], overrides: list[str]) -> str | None:
    try:
        refuse_ignored([compose_cfg(o) for o in job_overrides], overrides)
    except ConfigError as err:
        return str(err)
    return None


@pytest.mark.parametrize("kd, key, message", [
    ("dkd", "loss.temperature", "loss.temperature has no effect with kd=dkd; use kd.temperature"),
    ("dkd", "loss.alpha", "loss.alpha has no effect with kd=dkd; use kd.ce_weight (kd.alpha is the TCKD weight)"),
    ("dist", "loss.temperature", "loss.temperature has no effect with kd=dist; use kd.temperature"),
    ("ls", "loss.alpha", "loss.alpha has no effect with kd=ls; use kd.ce_weight"),
    ("ctkd", "loss.temperature",
     "loss.temperature has no effect with kd=ctkd; use kd.t_min and kd.t_max (a learned temperature)"),
])
def test_a_family_key_the_method_does_not_read_is_refused_naming_the_key_it_uses(kd, key, message):
    assert refusal([[f"kd={kd}"]], [f"kd={kd}", f"{key}=2"]) == message


def test_the_keys_a_method_reads_and_its_own_keys_are_accepted():
    assert refusal([[]], ["loss.temperature=2", "loss.alpha=0.5"]) is None  # kd=hinton reads both
    assert refusal([["kd=ctkd"]], ["kd=ctkd", "loss.alpha=0.5"]) is None  # ctkd reads loss.alpha
    assert refusal([["kd=dkd"]], ["kd=dkd", "kd.temperature=2", "kd.alpha=2"]) is None


def test_settings_a_family_or_its_mode_does_not_read_are_refused():
    assert refusal([["loss=self"]], ["loss=self", "loss.generations=3"]) == \
        "loss.generations has no effect with loss.mode=byot (only with loss.mode=born_again)"
    born = ["loss=self", "loss.mode=born_again"]
    assert refusal([born], [*born, "loss.feature_weight=0.1"]) == \
        "loss.feature_weight has no effect with loss.mode=born_again (only with loss.mode=byot)"
    assert refusal([born], [*born, "loss.temperature=2"]) is None  # kd=hinton between generations
    assert refusal([["loss=online"]], ["loss=online", "kd.standardize=false"]) == \
        "kd.standardize has no effect with loss=online, which composes no kd= or hint= method"
    assert refusal([["loss=none"]], ["loss=none", "loss.alpha=0.5"]) == "loss.alpha has no effect with loss=none (no teacher)"


def test_a_sweep_is_refused_only_when_no_job_reads_the_key():
    assert refusal([["kd=dkd"], ["kd=dkd"]], ["kd=dkd", "loss.temperature=2,8"]) is not None
    assert refusal([["kd=hinton"], ["kd=dkd"]], ["kd=hinton,dkd", "loss.temperature=2,8"]) is None
    assert refusal([["loss=none"], ["loss=standard"]], ["loss=none,standard", "loss.alpha=0.1,0.5"]) is None


def test_override_keys_are_settings_not_group_choices_nor_hydra_keys():
    assert override_keys(["kd=dkd", "model@teacher=cnn", "+loss.x=1", "~hint.weight", "hydra.verbose=true",
                          "loss.temperature=2,8", "seed=1"]) == ["loss.x", "hint.weight", "loss.temperature"]


def test_an_ignored_setting_is_neither_a_param_nor_part_of_the_run_identity():
    dkd = compose_cfg(["kd=dkd"])
    assert run_key(compose_cfg(["kd=dkd", "loss.temperature=8", "loss.alpha=0.9"]), "cpu") == run_key(dkd, "cpu")
    assert run_key(compose_cfg(["kd=dkd", "kd.temperature=8"]), "cpu") != run_key(dkd, "cpu")
    assert run_key(compose_cfg(["loss.temperature=8"]), "cpu") != run_key(compose_cfg([]), "cpu")
    params = run_params(dkd)
    assert "loss.temperature" not in params and "loss.alpha" not in params and params["kd.temperature"] == "4.0"
    assert {"loss.temperature", "loss.alpha"} <= set(run_params(compose_cfg([])))
    byot = run_params(compose_cfg(["loss=self"]))
    assert "loss.generations" not in byot and "loss.feature_weight" in byot and "kd.name" not in byot
    assert set(ignored_settings(compose_cfg(["kd=ctkd"]))) == {"loss.temperature"}


@pytest.mark.slow
def test_the_command_line_refuses_an_ignored_key_in_one_line_before_any_work(tmp_path):
    for args in (["kd=dkd", "loss.temperature=2"], ["-m", "kd=dkd", "loss.temperature=2,8"]):
        result = kdexp(args, tmp_path, timeout=120)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, result.stderr[-2000:]
        assert lines == ["kdexp: error: loss.temperature has no effect with kd=dkd; use kd.temperature"]
        assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_a_sweep_of_the_methods_own_temperature_runs_two_different_jobs(tmp_path):
    kdexp(["-m", "kd=dkd", "kd.temperature=2,8", "kd.warmup=0", *FAST, "trainer.baseline=false"], tmp_path,
          check=True)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    jobs = [r for r in mlflow.search_runs(experiment_names=["kdexp"], output_format="list")
            if r.data.tags.get("kdexp.role") == "job"]
    assert sorted(r.data.params["kd.temperature"] for r in jobs) == ["2.0", "8.0"]
    assert len({r.data.tags["kdexp.run_key"] for r in jobs}) == 2
    assert len({r.data.metrics["student/kd"] for r in jobs}) == 2  # a comparison of something
    assert all("loss.temperature" not in r.data.params for r in jobs)


def _sweep_config(task: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from kdexp.config.paths import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.overrides.task = task
        from kdexp.run.sweep import job_configs

        return job_configs(cfg, "base")


def test_a_sweep_is_checked_on_one_composed_config_per_kind_of_job():
    jobs = _sweep_config(["loss=none,standard", "loss.alpha=0.1,0.5", "seed=0,1"])
    assert sorted(job.loss.name for job in jobs) == ["none", "standard"]  # numbers make no new kind
    refuse_ignored(jobs, ["loss=none,standard", "loss.alpha=0.1,0.5"])
    with pytest.raises(ConfigError, match="loss.temperature has no effect with kd=dkd"):
        refuse_ignored(_sweep_config(["kd=dkd", "loss.temperature=2,8"]), ["kd=dkd", "loss.temperature=2,8"])
    assert _sweep_config(["loss.alpha=interval(0,1)"]) == ["base"]  # a sweeper's own search space
