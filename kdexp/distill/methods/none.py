"""`hint=none` (the default): no feature method; the family's loss is the logit method's alone."""

from __future__ import annotations

from dataclasses import dataclass

from kdexp.config.registry import HINT_METHODS
from kdexp.distill.methods.base import FeatureMethod


@dataclass
class NoHintConfig:
    name: str = "none"


@HINT_METHODS.register
class NoHint(FeatureMethod):
    name = "none"
    schema = NoHintConfig
    weights = ()

    @classmethod
    def plain(cls, cfg) -> bool:
        return True
