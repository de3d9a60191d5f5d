"""The registries by name: loss families (`loss=`), logit methods (`kd=`) and feature methods (`hint=`).

A leaf module (it imports nothing of kdexp): the classes register themselves when their module is
imported (`kdexp/distill/catalog.py` imports every family and method), and the schema check, the run code
and the tags iterate these tables, so that none of them names a family or a method.
Each registered class carries `name` (the config option), `schema` (its config dataclass),
`typed(section)` (what the schema cannot type, before any check) and `check(cfg)` (cross-field
checks on the whole typed config, raising `ConfigError`; they never write it).
"""

from __future__ import annotations

from typing import Any


class Registry(dict):
    """`{name: class}` for one config group; `register` is the class decorator that fills it."""

    def __init__(self, section: str):
        super().__init__()
        self.section = section

    def register(self, cls: Any) -> Any:
        if cls.name in self:
            raise ValueError(f"{self.section}={cls.name} is registered twice")
        self[cls.name] = cls
        return cls

    def schemas(self) -> dict[str, type]:
        return {name: cls.schema for name, cls in self.items()}


FAMILIES = Registry("loss")
KD_METHODS = Registry("kd")
HINT_METHODS = Registry("hint")

# The config sections chosen by name from a registry (besides the models), in validation order.
SECTIONS: dict[str, Registry] = {"loss": FAMILIES, "kd": KD_METHODS, "hint": HINT_METHODS}
