"""A contributor adds a distillation method with one module and one YAML file, and nothing else:
checked on a copy of the package, so the repository is never written."""

import shutil
from pathlib import Path

import pytest

from conftest import FAST
from helpers import kdexp

ROOT = Path(__file__).resolve().parent.parent

MODULE = '''"""`kd=scaled`: a test method, Hinton's KL with a weight of its own."""
from dataclasses import dataclass

import torch.nn.functional as F

from kdexp.distill.functional import kd_kl
from kdexp.config.registry import KD_METHODS
from kdexp.distill.methods.base import LogitMethod


@dataclass
class ScaledConfig:
    name: str = "scaled"
    temperature: float = 2.0
    kd_weight: float = 0.5


@KD_METHODS.register
class Scaled(LogitMethod):
    name = "scaled"
    schema = ScaledConfig
    temperatures = ("temperature",)
    weights = ("kd_weight",)

    def forward(self, batch, clock, student, teacher):
        ce = F.cross_entropy(student.logits, batch[1])
        kd = kd_kl(student.logits, teacher.logits, self.cfg.temperature)
        return {"loss": ce + self.cfg.kd_weight * kd, "ce": ce, "kd": kd}
'''


@pytest.mark.slow
def test_one_module_and_one_yaml_file_make_a_method(tmp_path):
    shutil.copytree(ROOT / "kdexp", tmp_path / "kdexp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (tmp_path / "kdexp" / "distill" / "methods" / "scaled.py").write_text(MODULE)
    (tmp_path / "conf" / "kd" / "scaled.yaml").write_text("name: scaled\ntemperature: 2.0\nkd_weight: 0.5\n")

    def copy(*args):  # the command line of the copy
        return kdexp(list(args), tmp_path, env={"PYTHONPATH": str(tmp_path)})

    done = copy("kd=scaled", *FAST, "data.limit_train=256", "tracking.log_model=false")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "KD gain" in done.stdout
    refused = copy("kd=scaled", "kd.kd_weight=-1", *FAST)
    assert refused.returncode == 2 and "kd.kd_weight=-1.0 is not allowed" in refused.stderr
    unknown = copy("kd=nope", *FAST)
    assert unknown.returncode == 2 and "allowed: ctkd, dist, dkd, hinton, ls, scaled" in unknown.stderr
    shadowed = copy("kd=scaled", "loss.temperature=8", *FAST)  # the method owns its temperature
    assert shadowed.returncode == 2 and shadowed.stderr == (
        "kdexp: error: loss.temperature has no effect with kd=scaled; use kd=scaled's own keys: "
        "kd.temperature, kd.kd_weight\n")
