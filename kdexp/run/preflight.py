"""Fit checks, before any run starts: every model of the experiment takes the data's inputs, and
the distillation methods find the layers they name, with features of a shape they can use."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from kdexp.data.source import Source
from kdexp.models import factory as models_mod
from kdexp.distill.compose import training_set
from kdexp.distill.features import Capture
from kdexp.config.registry import FAMILIES, SECTIONS
from kdexp.config.checks import ConfigError
from kdexp.distill.methods import Outputs

# The config sections that name a distillation method.
_METHOD_SECTIONS = ("kd", "hint")


def _model_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """Every model config in the experiment: teacher, student, and the lists some families add."""
    found = {"teacher": cfg.teacher, "student": cfg.student}
    for key, value in cfg.loss.items():
        if OmegaConf.is_list(value):
            found.update({f"loss.{key}[{i}]": m for i, m in enumerate(value)
                          if OmegaConf.is_dict(m) and "name" in m})
    return found


def check_models_fit(cfg: DictConfig, source: Source) -> None:
    """Build every model once and push two samples through it, so that a model that does not fit
    the data's shape is refused in one line before any run starts."""
    sample = source.sample(2).cpu()
    for where, model_cfg in _model_configs(cfg).items():
        try:
            model = models_mod.build(model_cfg, source.input_shape, source.num_classes, seed=0)
            with torch.no_grad():
                model.eval()(sample)
        except ConfigError as err:  # the builder names the section "model."; say which one it is
            raise ConfigError(str(err).replace("model.", f"{where}.", 1)) from None
        except (RuntimeError, ValueError) as err:
            cause = " ".join(str(err).split())[:200]
            raise ConfigError(f"{where}={models_mod.describe(model_cfg)} does not fit {cfg.data.name} "
                              f"inputs {tuple(source.input_shape)}: {cause}") from None


def check_methods_fit(cfg: DictConfig, source: Source) -> None:
    """Build the methods on the teacher and the student and push two samples through them: a layer
    the model does not have, or features a method cannot use, are refused in one line."""
    methods = [SECTIONS[s][cfg[s].name](cfg[s], cfg.loss) for s in _METHOD_SECTIONS]
    methods = [m for m in methods if not m.plain(m.cfg)]
    if not methods:
        return
    sample = source.sample(2).cpu()
    student = models_mod.build(cfg.student, source.input_shape, source.num_classes, seed=0).eval()
    teacher_cfg = FAMILIES[cfg.loss.name].method_teacher(cfg)
    teacher = models_mod.build(teacher_cfg, source.input_shape, source.num_classes, seed=0).eval()
    for method in methods:
        method.train_set = training_set(source)  # what state sized by the data set is built from
        method.resolve(student, teacher)
        with Capture(student, method.student_layers(), "hint.student") as s_cap, \
                Capture(teacher, method.teacher_layers(), "hint.teacher") as t_cap, torch.no_grad():
            s_out = Outputs(student(sample), dict(s_cap.features))
            t_out = Outputs(teacher(sample), dict(t_cap.features))
            method.setup(s_out, t_out)
