"""What a run is called, tagged and logs as params: its teacher and student as its family uses them
(each family's `pair_labels`), the loss family, the distillation methods, the data set, the overrides, and
the resolved config without the keys that do not apply to its family."""

from __future__ import annotations

from omegaconf import DictConfig

from kdexp.config.owners import ignored_settings, ignores
from kdexp.config.sections import flatten
from kdexp.config.registry import FAMILIES


def _pair_labels(cfg: DictConfig) -> tuple[str, str]:
    return FAMILIES[cfg.loss.name].pair_labels(cfg)


def run_tags(cfg: DictConfig, overrides: list[str]) -> dict[str, str]:
    from kdexp.tracking import git_commit

    teacher, student = _pair_labels(cfg)
    tags = {
        "loss_family": cfg.loss.name,
        "kd": cfg.kd.name,
        "hint": cfg.hint.name,
        "teacher": teacher,
        "student": student,
        "dataset": cfg.data.name,
        "overrides": " ".join(overrides) or "(none)",
    }
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


def default_run_name(cfg: DictConfig, overrides: list[str]) -> str:
    if overrides:
        return " ".join(overrides)
    teacher, student = _pair_labels(cfg)
    return f"{cfg.loss.name} {teacher}→{student}"


def run_params(cfg: DictConfig) -> dict[str, str]:
    """The flattened resolved config, less the settings the run ignores (kdexp/config/owners.py:
    e.g. `loss=none` logs no temperature, alpha, kd.* or hint.*; `kd=dkd` no loss.temperature)."""
    ignored = ignored_settings(cfg)
    return {key: value for key, value in flatten(cfg).items() if ignores(ignored, key) is None}
