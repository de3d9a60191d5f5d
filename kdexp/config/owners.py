"""One owner per setting: which settings a run ignores, and the refusal of one set on the command line.

A family reads its `loss` keys itself, or hands some to the logit method (`kd=hinton` reads
`loss.temperature` and `loss.alpha`; `kd=dkd` owns `kd.temperature` and reads neither). What the
chosen family and method do not read is *ignored* (`Family.ignored`, kdexp/distill/families/base.py):
it is not logged as a param, it is pinned to its default in the run identity (so a run that
computes what it computed before keeps its key), and setting it on the command line is refused
in one line that names the key to use instead, before any work — for a sweep, when no job of the
sweep reads it (`kdexp -m loss=none,standard loss.alpha=0.1,0.5` is a fair sweep).
"""

from __future__ import annotations

from typing import Iterable

from kdexp.config.checks import ConfigError
from kdexp.config.registry import FAMILIES, SECTIONS


def ignored_settings(cfg) -> dict[str, str]:
    """Dotted key (a trailing `.`: a whole section) → why a run of the typed `cfg` ignores it."""
    return FAMILIES[cfg.loss.name].ignored(cfg)


def ignores(ignored: dict[str, str], key: str) -> str | None:
    """Why `key` is ignored (one of `ignored`'s reasons), or None when the run reads it."""
    for name, why in ignored.items():
        if key == name or (name.endswith(".") and key.startswith(name)):
            return why
    return None


def override_key(override: str) -> str:
    """`+loss.alpha=0.5` → `loss.alpha`; `model@student=cnn` → `model@student`."""
    return override.split("=", 1)[0].lstrip("+~")


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys the overrides set (`loss.temperature=2,8` → `loss.temperature`); group
    choices (`kd=dkd`, `model@teacher=cnn`) and Hydra's own keys are not settings of a run."""
    keys = [override_key(override) for override in overrides]
    return [key for key in keys if "." in key and "@" not in key and not key.startswith("hydra.")]


def refuse_ignored(job_cfgs: list, overrides: Iterable[str]) -> None:
    """Raise ConfigError for the first key `overrides` set that every config of `job_cfgs` (one
    run, or the jobs of a sweep) ignores."""
    per_job = [ignored_settings(cfg) for cfg in job_cfgs]
    for key in override_keys(overrides):
        reasons = [ignores(ignored, key) for ignored in per_job]
        if per_job and all(reasons):
            raise ConfigError(f"{key} has no effect {reasons[0]}")


def pinned(cfg, plain: dict) -> dict:
    """`plain` (the resolved config as a dict) with every ignored key at its schema default, so
    that the run identity does not depend on it."""
    for key in ignored_settings(cfg):
        section, _, leaf = key.partition(".")
        if not leaf or section not in plain or leaf not in plain[section]:
            continue  # a whole section: the family refuses any but the plain methods there
        schema = SECTIONS[section][cfg[section].name].schema
        plain[section][leaf] = schema.__dataclass_fields__[leaf].default
    return plain
