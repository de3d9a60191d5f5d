"""Distillation terms, one file each: logit terms (`kd=`) and feature terms (`hint=`).
Importing this package registers them all by name (kdexp/registry.py)."""

from kdexp.terms import at, ctkd, dist, dkd, fitnets, hinton, ls, none  # noqa: F401  (registration)
from kdexp.terms.base import FeatureTerm, LogitTerm, Outputs, Term, is_plain

__all__ = ["FeatureTerm", "LogitTerm", "Outputs", "Term", "is_plain"]
