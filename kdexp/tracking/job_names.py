"""Run names that tell runs apart: a sweep's job by what varies across its sweep, the parent by
the sweep's axes. The full override list stays in each run's `overrides` tag.

Overrides arrive as one space-joined text (the `overrides` tag); a value may hold spaces
(`loss.teachers=[cnn, mlp]`), so the text is cut only before a word that starts a new override
(`key=`, `+key=`, `~key=`, `group@package=`)."""

from __future__ import annotations

import json
import re

from kdexp.config.owners import override_key

_NEXT_OVERRIDE = re.compile(r" (?=[+~]*[A-Za-z_][\w.@/-]*=)")
NAME_LIMIT = 250  # MLflow's limit on a run name
COMMON_KEYS_TAG = "kdexp.common_keys"  # on a sweep parent, JSON: the keys every job sets alike


def split_overrides(text: str) -> list[str]:
    text = text.strip()
    return [] if not text or text == "(none)" else _NEXT_OVERRIDE.split(text)


def job_name(overrides: str, common_keys: list[str]) -> str | None:
    """The job's overrides of keys that are not common to every job of its sweep (the axes, and
    what a sweeper such as Optuna chose), in their order; None when nothing varies."""
    common = set(common_keys)
    varying = [o for o in split_overrides(overrides) if override_key(o) not in common]
    return " ".join(varying)[:NAME_LIMIT] or None


def sweep_name(axes: list[str], folder: str) -> str:
    """`sweep loss.temperature=2,8 loss.alpha=0.1,0.9`; with no axes on the command line (a
    sweeper's own search space) the sweep folder's name tells launches apart."""
    return (f"sweep {' '.join(axes)}" if axes else f"sweep {folder}")[:NAME_LIMIT]


def job_name_of(mlflow_client, parent_id: str, overrides: str) -> str | None:
    """A job's run name from its sweep parent's common keys (None: nothing varies, or the parent
    predates the tag)."""
    tag = mlflow_client.get_run(parent_id).data.tags.get(COMMON_KEYS_TAG)
    return job_name(overrides, json.loads(tag)) if tag is not None else None
