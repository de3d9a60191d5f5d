"""The building blocks of config validation: the one-line `ConfigError` and the checks that
every section's schema uses (a leaf module: the families and terms import it, it imports none)."""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A bad setting: the message is the one line the user sees."""


# Every temperature (loss.temperature and the terms' own) lies in (0, MAX_TEMPERATURE]: beyond it
# every softened distribution is uniform to float precision and the student learns nothing.
MAX_TEMPERATURE = 100.0


def one_line(err: Exception) -> str:
    return " ".join(str(err).split("\n")[0].split())


def typed(section: str, schema: type, value: Any) -> DictConfig:
    """Merge a composed section into its schema; unknown keys and bad types raise ConfigError."""
    if not isinstance(value, DictConfig):
        raise ConfigError(f"{section}: expected a config group, got {value!r}")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), value)
    except OmegaConfBaseException as err:
        key = f"{section}.{err.full_key}" if getattr(err, "full_key", None) else section
        allowed = ", ".join(f.name for f in schema.__dataclass_fields__.values())
        raise ConfigError(f"{key}: {one_line(err)} (keys of {section}: {allowed})") from None
    return typed


def by_name(section: str, schemas: dict[str, type], value: Any) -> DictConfig:
    name = value.get("name") if isinstance(value, DictConfig) else None
    if name not in schemas:
        raise ConfigError(
            f"{section}.name={name!r} is not known; allowed: {', '.join(sorted(schemas))}"
        )
    return typed(section, schemas[name], value)


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Refuse `key=value` unless ok, with one line saying what is allowed."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed; {allowed}")


def require_temperature(key: str, value: float) -> None:
    """A temperature: finite, in (0, MAX_TEMPERATURE]."""
    require(math.isfinite(value) and 0 < value <= MAX_TEMPERATURE, key, value,
            f"must be a finite number in (0, {MAX_TEMPERATURE:g}]")


def require_weight(key: str, value: float) -> None:
    """A loss weight: finite and >= 0."""
    require(math.isfinite(value) and value >= 0, key, value, "must be a finite number >= 0")
