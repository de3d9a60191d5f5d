"""`hint=none` (the default): no feature term; the family's loss is the logit term's alone."""

from __future__ import annotations

from dataclasses import dataclass

from kdexp.registry import HINT_TERMS
from kdexp.terms.base import FeatureTerm


@dataclass
class NoHintConfig:
    name: str = "none"


@HINT_TERMS.register
class NoHint(FeatureTerm):
    name = "none"
    schema = NoHintConfig
    weights = ()

    @classmethod
    def plain(cls, cfg) -> bool:
        return True
