"""Distillation methods, one file each: logit methods (`kd=`) and feature methods (`hint=`).

Importing this package imports every module in it, and each registers its method by name
(kdexp/config/registry.py): adding a method is adding a module here and its YAML file in conf/kd/ or conf/hint/.
"""

import importlib
import pkgutil

from kdexp.distill.methods.base import FeatureMethod, LogitMethod, Outputs, Method, is_plain

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FeatureMethod", "LogitMethod", "Outputs", "Method", "is_plain"]
