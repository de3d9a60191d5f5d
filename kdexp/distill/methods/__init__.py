"""Distillation terms, one file each: logit terms (`kd=`) and feature terms (`hint=`).

Importing this package imports every module in it, and each registers its term by name
(kdexp/config/registry.py): adding a term is adding a module here and its YAML file in conf/kd/ or conf/hint/.
"""

import importlib
import pkgutil

from kdexp.distill.methods.base import FeatureMethod, LogitMethod, Outputs, Method, is_plain

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FeatureMethod", "LogitMethod", "Outputs", "Method", "is_plain"]
