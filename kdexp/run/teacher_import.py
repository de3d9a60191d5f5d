"""Teachers the user brings (issue 16): `teacher.checkpoint` (and each `loss.teachers` entry's)
names a `.pt`/`.pth` file or an MLflow model URI whose weights the teacher takes instead of being
trained.

A file is read with `weights_only=True` (kdexp never unpickles code); it holds a state dict, or a
dict holding one under a usual key (`model`, `state_dict`, ...). A CIFAR ResNet also takes the
module layout of the CIFAR-100 KD benchmark code (`resnets.from_benchmark_layout`), so its
published teachers load as they are. What identifies the weights (`source_of`: the file's sha256,
or the URI and the model version it resolves to) keys the teacher's store entry, so a moved or
renamed file is the same teacher. Every refusal is one line, raised before anything trains.

A sweep's jobs use one teacher (issue 27, case 4): its launcher pins what each checkpoint is at
launch (`pin_sweep_teachers`, passed to the jobs in `PINNED_ENV`), and a job that finds a file
changed since (overwritten mid-sweep) or a model URI resolving to another version is refused in
one line naming both, instead of ranking students of two teachers as one comparison.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from kdexp.models import factory as models_mod
from kdexp.config.checks import ConfigError

# Keys under which training scripts save the state dict beside their epoch, optimiser, accuracy.
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "net", "weights", "params")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # runs:/, models:/, s3://: a scheme of 2+ letters
_SHOWN = 4  # keys named per kind in a refusal


def is_model_uri(ref: str) -> bool:
    return bool(_URI.match(ref))


def _existing_file(ref: str, key: str) -> Path:
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}={ref}: no such file; allowed: a .pt/.pth state-dict file or an MLflow "
                          f"model URI (runs:/<run id>/<model name>, models:/<name>/<version>)")
    return path


def source_of(ref: str, key: str) -> dict[str, str]:
    """What identifies the imported weights, for the store key: the file's content or the model;
    in a sweep's job, refused when it is not what the sweep's launcher pinned."""
    found = _identify(ref, key)
    _refuse_changed(ref, key, found)
    return found


def _identify(ref: str, key: str) -> dict[str, str]:
    if is_model_uri(ref):
        from kdexp import tracking

        return {"model_uri": ref, **tracking.model_version(ref, key)}
    digest = hashlib.sha256()
    with open(_existing_file(ref, key), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest()}


PINNED_ENV = "KDEXP_SWEEP_TEACHERS"  # JSON {checkpoint as written: its identity at the sweep's launch}


def pin_sweep_teachers(configs) -> str | None:
    """At a sweep's launch: the identity of every checkpoint its jobs' configs name, as the JSON
    the jobs check theirs against (None when they name none). Hashing each file once here, not
    first in whichever job reads it first, is what makes a file overwritten mid-sweep visible."""
    pinned = {}
    for cfg in configs:
        for key, model_cfg in imported_models(cfg):
            ref = str(model_cfg.checkpoint)
            if ref not in pinned:
                pinned[ref] = _identify(ref, key)
    return json.dumps(pinned, sort_keys=True) if pinned else None


def _refuse_changed(ref: str, key: str, found: dict[str, str]) -> None:
    """One line when `ref` is no longer what the sweep's launcher pinned: the jobs already run
    used the pinned weights, so this job would distil from another teacher."""
    pinned = json.loads(os.environ.get(PINNED_ENV) or "{}").get(ref)
    if pinned is None or pinned == found:
        return
    what = ref if is_model_uri(ref) else Path(ref).name
    changes = ", ".join(f"{field} {_short(pinned.get(field))} at launch, {_short(found.get(field))} now"
                        for field in sorted(set(pinned) | set(found)) if pinned.get(field) != found.get(field))
    raise ConfigError(f"{key}={ref}: {what} changed during the sweep ({changes}); a sweep's jobs share one "
                      f"teacher: restore the file, or start a new sweep (the same command) to run every job "
                      f"with the new one")


def _short(value: str | None) -> str:
    if value is None:
        return "none"
    return f"{value[:12]}…" if len(value) > 16 else value


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj, key: str, ref: str) -> dict:
    """The state dict in what a checkpoint file holds, without DataParallel's `module.` prefix."""
    if not _is_state_dict(obj) and isinstance(obj, dict):
        obj = next((obj[k] for k in WRAPPER_KEYS if _is_state_dict(obj.get(k))), obj)
    if not _is_state_dict(obj):
        held = f"a dict with keys {', '.join(map(str, list(obj)[:8]))}" if isinstance(obj, dict) else type(obj).__name__
        raise ConfigError(f"{key}={ref}: holds {held}, not a state dict; allowed: a state dict (name → tensor) "
                          f"or a dict holding one under {', '.join(WRAPPER_KEYS)}")
    if all(name.startswith("module.") for name in obj):
        obj = {name.removeprefix("module."): value for name, value in obj.items()}
    return obj


def read_state(ref: str, key: str) -> dict:
    """The state dict `ref` (a file or an MLflow model URI) holds, on the CPU."""
    if is_model_uri(ref):
        from kdexp import tracking

        return tracking.load_model_state(ref, key)
    path = _existing_file(ref, key)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, BadZipFile: not readable
        needs = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if needs:
            raise ConfigError(f"{key}={ref}: the file holds pickled Python objects ({needs.group(1)}), not only "
                              f"tensors; kdexp never unpickles code (weights_only=True): save model.state_dict() "
                              f"instead") from None
        cause = " ".join(str(err).split("WeightsUnpickler error:")[-1].split())[:200]
        raise ConfigError(f"{key}={ref}: not a torch checkpoint ({type(err).__name__}: {cause})") from None
    return _unwrap(obj, key, ref)


def _names(keys) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def fitted(state: dict, model: nn.Module, model_cfg, key: str, ref: str) -> dict:
    """`state` named as `model`'s parameters (renamed from the CIFAR-100 benchmark's layout for the
    architectures that have one: ResNets, WRNs, VGGs, MobileNetV2, ShuffleNets), or a one-line refusal naming the missing and unexpected keys and the first shape
    that differs."""
    expected = model.state_dict()
    if set(state) != set(expected):
        state = models_mod.from_benchmark_layout(state, model, model_cfg) or state
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    mismatch = next((f"{name} is {list(state[name].shape)} in the file, {list(value.shape)} in the model"
                     for name, value in expected.items() if name in state and state[name].shape != value.shape), None)
    if missing or unexpected or mismatch:
        parts = [f"missing keys: {_names(missing)}" if missing else "",
                 f"unexpected keys: {_names(unexpected)}" if unexpected else "",
                 f"first shape mismatch: {mismatch}" if mismatch else ""]
        raise ConfigError(f"{key}={ref}: does not fit {models_mod.describe(model_cfg)} "
                          f"({'; '.join(p for p in parts if p)})")
    refuse_non_finite(state, key, ref)
    return state


def refuse_non_finite(state: dict, key: str, ref: str) -> None:
    """A file whose weights hold NaN or inf is refused in one line naming it: a teacher that was
    never trained here must not fail the run later with advice about learning rates and epochs."""
    bad = {name: int((~torch.isfinite(t)).sum()) for name, t in state.items()
           if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())}
    if bad:
        first = next(iter(bad))
        raise ConfigError(f"{key}={ref}: the file's weights are not finite ({sum(bad.values())} NaN/inf values in "
                          f"{len(bad)} tensors, first {first}); it cannot be a teacher: export it again from a "
                          f"healthy run")


def import_weights(model: nn.Module, model_cfg, key: str) -> None:
    """Load `model_cfg.checkpoint` into `model` (built from `model_cfg`)."""
    ref = str(model_cfg.checkpoint)
    model.load_state_dict(fitted(read_state(ref, key), model, model_cfg, key, ref))


def imported_models(cfg) -> list[tuple[str, object]]:
    """(config key, model config) of every model of `cfg` that names a checkpoint."""
    teachers = cfg.loss.get("teachers") or []
    found = [("teacher", cfg.teacher)] + [(f"loss.teachers[{i}]", m) for i, m in enumerate(teachers)]
    return [(f"{where}.checkpoint", m) for where, m in found if m.get("checkpoint")]


def check_checkpoints(cfg, input_shape: tuple[int, ...], num_classes: int) -> dict[str, dict]:
    """Before anything trains: every checkpoint named is readable and fits its model; students
    and peers take none (they are trained by the run). Returns each one's identity (`source_of`)
    by config key, for the run key: new weights under the same path are another run."""
    trained = [("student", cfg.student)] + [(f"loss.peers[{i}]", p) for i, p in enumerate(cfg.loss.get("peers") or [])]
    for where, model_cfg in trained:
        if model_cfg.get("checkpoint"):
            raise ConfigError(f"{where}.checkpoint={model_cfg.checkpoint}: only teachers are imported "
                              f"(teacher.checkpoint, loss.teachers[i].checkpoint); allowed: null")
    sources = {}
    for key, model_cfg in imported_models(cfg):
        sources[key] = source_of(str(model_cfg.checkpoint), key)
        model = models_mod.build(model_cfg, input_shape, num_classes, 0)
        import_weights(model, model_cfg, key)
    return sources
