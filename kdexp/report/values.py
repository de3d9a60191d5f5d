"""A job's swept values, read from its `overrides` tag with Hydra's own override parser.

The tag is the job's overrides joined by spaces; an override's value may itself hold spaces
(`loss.teachers=[cnn, mlp]`, `'tracking.run_name=my run'`), so the text is cut where Hydra's
grammar says one override ends, not by shell rules."""

from __future__ import annotations

import math

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException


def split_overrides(text: str) -> list[Override]:
    """`"a=1 b=[x, y] c=my run"` → the overrides a, b, c. Each override is the shortest run of
    space-separated words Hydra parses; a word that starts none belongs to the value before it."""
    parser = OverridesParser.create()

    def parse(candidate: str) -> Override | None:
        try:
            return parser.parse_override(candidate)
        except HydraException:
            return None

    words, found, i = text.split(" "), [], 0
    while i < len(words):
        for j in range(i + 1, len(words) + 1):
            override = parse(" ".join(words[i:j]))
            if override is not None:
                found.append(override)
                i = j
                break
        else:
            longer = parse(f"{found[-1].input_line} {words[i]}") if found else None
            if longer is not None:
                found[-1] = longer
            i += 1
    return found


def value_text(override: Override) -> str:
    """The value as written, without quotes; lists and mappings in Hydra's own compact form."""
    value = override.value()
    if isinstance(value, str):
        return value
    try:
        return override.get_value_element_as_str()
    except HydraException:  # a sweep: never in a job's tag, but shown as given
        return override.get_value_string()


def parse_overrides(text: str | None) -> dict[str, str]:
    """`"loss.temperature=2 +x=1 model@student=cnn"` → `{"loss.temperature": "2", "x": "1",
    "model@student": "cnn"}` (Hydra's +, ++, ~ dropped; a deletion without a value left out)."""
    if not text or text == "(none)":
        return {}
    out = {}
    for override in split_overrides(text.strip()):
        if override.is_delete() and "=" not in (override.input_line or ""):
            continue
        key = override.key_or_group if override.package is None else f"{override.key_or_group}@{override.package}"
        out[key] = value_text(override)
    return out


def canonical(value: str | None) -> object:
    """Numbers as floats (so `2` and `2.0` are one value), anything else as text."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) else value


def show(value: object) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def sort_key(value: object):
    return (0, value, "") if isinstance(value, float) else (1, 0.0, str(value))


def job_values(run) -> dict[str, object]:
    """The job's overridden keys → canonical values (the resolved param when one has the key's name)."""
    return {key: canonical(run.params.get(key, value)) for key, value in parse_overrides(run.tags.get("overrides")).items()}


AXES_TAG = "kdexp.sweep_axes"  # JSON list of the launch's sweep overrides (kdexp.tracking.sweeps)


def declared_axes(parent) -> list[str]:
    """The keys the sweep was launched to vary (`kd=hinton,dkd` → `kd`): axes from the start, even
    while only jobs of one of their values have run."""
    import json

    try:
        axes = json.loads(parent.tags.get(AXES_TAG, "[]"))
    except ValueError:
        return []
    return list(parse_overrides(" ".join(axes))) if axes else []


def swept_keys(parent, children: list) -> list[str]:
    """Keys the sweep varies: those it was launched to vary (`declared_axes`), and any whose values
    differ across the jobs (from their overrides, else from their params). A key named by the
    launch is an axis before its second value has run, so that a setting's name never changes
    while the sweep runs. Ordered as in the sweep's own overrides, then as first met."""
    declared = declared_axes(parent)
    per_job = [job_values(c) for c in children]
    keys: list[str] = list(parse_overrides(parent.tags.get("kdexp.sweep_overrides")))
    for values in per_job:
        keys += [k for k in values if k not in keys]
    if not any(per_job):  # jobs without an overrides tag: compare their resolved configs
        per_job = [{k: canonical(v) for k, v in c.params.items()} for c in children]
        keys = sorted({k for values in per_job for k in values})
    return [k for k in keys if k in declared or len({repr(values.get(k)) for values in per_job}) > 1]


def first_present(children: list, *keys: str) -> str | None:
    return next((k for k in keys if any(k in c.metrics for c in children)), None)
