"""Bad kd= / hint= choices and the closed validation gaps: one line, non-zero exit, nothing trained,
no earlier run touched (the same contract as tests/test_bad_inputs.py)."""

import pytest

from conftest import FAST
from helpers import kdexp, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("bad-methods")
    result = kdexp([*FAST, "data.limit_train=300", "tracking.log_model=false"], cwd, timeout=600)
    assert result.returncode == 0, result.stderr
    before = snapshot(cwd)
    assert len(before) == 1 and before[0][1] == "FINISHED"
    return cwd, before


BAD = [
    ("unknown kd", ["kd=nope"], "kd=nope is not an option of kd; allowed: ctkd, dist, dkd, hinton, ls"),
    ("unknown hint", ["hint=nope"], "hint=nope is not an option of hint; allowed: ab, at, cc, crd, fitnets, fsp"),
    ("at on an mlp student", ["hint=at"], "model@student='mlp' is not allowed; hint=at needs feature maps"),
    ("missing layer", ["hint=fitnets", "hint.teacher=stages.9"], "its layers: stem, stages, stages.0"),
    ("negative hint weight", ["hint=fitnets", "hint.weight=-1"], "hint.weight"),
    ("negative dkd beta", ["kd=dkd", "kd.beta=-8"], "kd.beta"),
    ("negative kd temperature", ["kd=dkd", "kd.temperature=-4"], "kd.temperature"),
    ("infinite temperature", ["loss.temperature=inf"], "loss.temperature=inf is not allowed; must be a finite number in (0, 100]"),
    ("huge temperature", ["loss.temperature=1e9"], "loss.temperature"),
    ("fractional seed", ["seed=1.5"], "seed=1.5 is not allowed; must be an integer"),
    ("method with another family", ["loss=online", "kd=dist"], "loss=online does not compose distillation methods"),
]


@pytest.mark.parametrize("args, needle", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_method_input(folder, args, needle):
    cwd, before = folder
    result = kdexp([*FAST, *args], cwd, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kdexp: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert snapshot(cwd) == before
