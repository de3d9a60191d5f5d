"""A misspelt config key, refused in one line with the closest valid key.

Hydra refuses `loss.temprature=8` too, but in several lines that advise `+loss.temprature=8`
(which would add the typo to the config). Checked before Hydra runs: the config is composed
with the command line's group choices (`loss=self`, `+experiment=dml`, the first value of a
swept group), and every plain `key=value` override must name a key of it."""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

_ABSENT = object()


def config_keys(cfg, prefix: str = "") -> list[str]:
    """Every key of the composed config, dotted (`loss.temperature`), sections included."""
    keys = []
    for key in cfg.keys() if isinstance(cfg, DictConfig) else []:
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        value = cfg._get_node(key)
        if isinstance(value, DictConfig):
            keys += config_keys(value, f"{dotted}.")
    return keys


def closest(key: str, keys: list[str]) -> str | None:
    """The valid key nearest to `key`: compared whole, and by its last part within its section."""
    found = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return found[0] if found else None


def _plain_key(override) -> str | None:
    """The key a `key=value` override sets, or None for what it cannot misspell (`+key` adds,
    `~key` deletes, hydra's own settings, a group choice)."""
    if override.is_add() or override.is_force_add() or override.is_delete():
        return None
    key = override.key_or_group
    return None if override.package is not None or key.startswith("hydra") else key


def unknown_key(overrides: list, config_dir: Path, groups: set[str]) -> str | None:
    """One line for the first override of a key the composed config lacks, else None."""
    from hydra import compose, initialize_config_dir

    choices, plain = [], []
    for override in overrides:
        group = override.key_or_group
        if group in groups or override.package is not None:
            value = override.get_value_element_as_str() if not override.is_sweep_override() \
                else next(iter(override.sweep_string_iterator()), None)
            if value is not None and not override.is_delete():
                prefix = "+" if override.is_add() else ""
                at = f"@{override.package}" if override.package else ""
                choices.append(f"{prefix}{group}{at}={value}")
        elif (key := _plain_key(override)) is not None:
            plain.append((key, override.input_line))
    if not plain:
        return None
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name="config", overrides=choices)
    except Exception:  # noqa: BLE001 - anything else wrong: Hydra itself reports it
        return None
    keys = [k for k in config_keys(cfg) if not k.startswith("hydra")]
    for key, text in plain:
        if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT:
            continue
        section, _, _ = key.rpartition(".")
        node = OmegaConf.select(cfg, section, default=None) if section else cfg
        allowed = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
        suggestion = closest(key, keys)
        hint = f"did you mean {suggestion}? " if suggestion else ""
        where = f"keys of {section}" if section and allowed else "top-level keys"
        if not allowed:
            allowed = [str(k) for k in cfg.keys() if k != "hydra"]
        return f"{text}: no such key; {hint}allowed ({where}): {', '.join(allowed)}"
    return None


__all__ = ["closest", "config_keys", "unknown_key"]
