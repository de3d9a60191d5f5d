"""Loss families, one file each. Importing this package imports every module in it, and each
family registers itself by name (kdexp/config/registry.py): a family is a module here and a conf/loss/ file."""

import importlib
import pkgutil

from kdexp.distill.families.base import FAMILIES, Family, Outcome

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FAMILIES", "Family", "Outcome"]
