"""The command line itself (bad inputs: tests/test_bad_inputs.py)."""

import pytest

from helpers import kdexp
from kdexp.cli.main import check_group_choices


@pytest.mark.slow
def test_cfg_job_prints_the_composed_config(tmp_path):
    result = kdexp(["--cfg", "job", "loss.temperature=8"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "temperature: 8" in result.stdout and "hydra" not in result.stdout.split("\n")[0]


@pytest.mark.slow
def test_help_lists_the_config_groups(tmp_path):
    result = kdexp(["--help"], tmp_path, timeout=120)
    assert result.returncode == 0
    for group in ("loss:", "data:", "model:"):
        assert group in result.stdout


@pytest.mark.parametrize("override", ["data.root=~/datasets", "loss.temperature=[1,", "loss=standard)"])
def test_an_override_hydra_cannot_parse_is_one_line_naming_it(override, capsys):
    with pytest.raises(SystemExit) as stop:
        check_group_choices(["trainer.epochs=1", override])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kdexp: error: "), err
    assert override in err
    assert ("$HOME" in err) == ("~" in override)  # the fix for a home folder is named


def test_the_value_of_a_hydra_flag_is_no_override():
    check_group_choices(["-cd", "/configs/a=b", "--cfg", "job", "loss=standard"])  # does not exit


@pytest.mark.slow
def test_an_unparsable_override_on_the_command_line_is_one_line(tmp_path):
    result = kdexp(["data.root=~/datasets"], tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("kdexp: error: data.root=~/datasets")
    assert not (tmp_path / "mlflow.db").exists()
