"""Identity: which settings make two runs the same run (`run_key`) and two stored models the same
model (`key_for`, `imported_key_for`, `logits_key_for`), stable across kdexp versions.

A run is identified by a hash of its resolved config minus the settings that do not change what it
computes (`NOT_IDENTITY`: progress bars, threads, the re-run policy, where things are tracked).
A key that a later version adds must not change the identity of the runs (and the store entries)
of earlier versions: `ADDED` lists every key added after the first release with the value that
means "as before", and the payload drops such a key while it holds that value, then drops the
sections this leaves empty. So an upgrade still finds every finished run and stored teacher, and a
run that sets a new key to anything else is a new run. Add a key here when you add it to a schema.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from omegaconf import OmegaConf

from kdexp.config.owners import pinned

# Settings that do not change what a run computes, so they are not part of its identity.
NOT_IDENTITY: dict[str, tuple[str, ...] | None] = {
    "trainer": ("progress", "threads", "rerun", "checkpoint_dir", "keep_checkpoints", "fail_at_chance",
                "dist_timeout", "channels_last"),
    "tracking": ("uri", "run_name", "log_model"),
    # How many loader processes read the images and how far ahead: the same batches either way.
    "data": ("workers", "prefetch"),
    "store": None,  # reusing a stored teacher gives the same weights as retraining it
}

# `data.eval_batch_size` changes how fast a run evaluates, not what it computes, but run keys have
# always hashed it; it is hashed at the value every earlier key was made with (the default, 1000),
# so a CIFAR run evaluating 64 at a time (issue 26) keeps its key and equal runs are one.
KEYED_EVAL_BATCH_SIZE = 1000

# Keys added after the first release → the value that reproduces the earlier behaviour, by dotted
# path from the top of a run's config.
ADDED: dict[str, Any] = {
    # issue 11: the logit method and the feature method; hinton on raw logits and no feature method
    # are what every earlier run computed.
    "kd.name": "hinton",
    "kd.standardize": False,
    "hint.name": "none",
    # issue 23: batch norm over each process's part of the batch, as every earlier (1-process) run.
    "trainer.sync_bn": False,
}
# Keys added to the sections a store entry's key hashes (a model config, `data`, `optim`), by path
# inside the section. They count for the run key too (under teacher/student, data, optim).
# issue 16: `checkpoint` (an imported teacher); null is a model trained by kdexp, as before.
# issue 24: the image-folder settings; at their defaults they change nothing for the other data sets.
ADDED_IN_SECTIONS: dict[str, dict[str, Any]] = {"model": {"checkpoint": None}, "optim": {}, "data": {
    "image_size": 224, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    "in_memory": "auto", "memory_budget_mb": 2048, "workers": None, "prefetch": 2, "skip_bad_files": False}}


def _run_table() -> dict[str, Any]:
    table = dict(ADDED)
    for kind, keys in ADDED_IN_SECTIONS.items():
        for section in (("teacher", "student") if kind == "model" else (kind,)):
            table.update({f"{section}.{key}": value for key, value in keys.items()})
    return table


def drop_added(plain: dict, table: dict[str, Any] | None = None) -> dict:
    """A copy of `plain` without the keys of `table` (default `ADDED`) that hold their "as before"
    value, and without the sections that leaves empty."""
    out = copy.deepcopy(plain)
    for path, before in (ADDED if table is None else table).items():
        *parents, leaf = path.split(".")
        chain = [out]
        for part in parents:
            node = chain[-1].get(part) if isinstance(chain[-1], dict) else None
            if not isinstance(node, dict):
                break
            chain.append(node)
        else:
            if leaf in chain[-1] and chain[-1][leaf] == before:
                del chain[-1][leaf]
                for parent, part in zip(reversed(chain[:-1]), reversed(parents)):
                    if parent[part]:
                        break
                    del parent[part]
    return out


def digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def run_key(cfg, device: str | None = None, imported: dict | None = None) -> str:
    """Hash of the resolved config without the settings in `NOT_IDENTITY`, the added keys at
    their "as before" value, and the settings the run ignores at their default (kdexp/config/owners.py). `device` is what `trainer.device` resolved to here, so that `auto`
    and the device it picks are one run. `imported`: the identity of each imported teacher's
    weights (`teacher_import.check_checkpoints`), so a checkpoint file rewritten in place makes
    another run; none leaves the key what it was."""
    plain = pinned(cfg, OmegaConf.to_container(cfg, resolve=True))
    if imported:
        plain["imported"] = imported
    if device is not None:
        plain["trainer"]["device"] = device
    if "eval_batch_size" in plain.get("data", {}):
        plain["data"]["eval_batch_size"] = KEYED_EVAL_BATCH_SIZE
    for section, keys in NOT_IDENTITY.items():
        if keys is None:
            plain.pop(section, None)
        else:
            for key in keys:
                plain.get(section, {}).pop(key, None)
    _drop_added_in_model_lists(plain)
    revisions = recipe_revisions(cfg)
    if revisions:  # only a method whose recipe changed: every other key stays what it was
        plain["recipe_revisions"] = revisions
    return digest(drop_added(plain, _run_table()))


def recipe_revisions(cfg) -> dict[str, int]:
    """`{section: revision}` of the config's kd= and hint= methods whose recipe was revised (a
    method's `revision` above 1: the same settings now compute something else)."""
    from kdexp.config.registry import HINT_METHODS, KD_METHODS

    found = {}
    for section, registry in (("kd", KD_METHODS), ("hint", HINT_METHODS)):
        method = registry.get(cfg[section].name) if section in cfg else None
        if method is not None and getattr(method, "revision", 1) > 1:
            found[section] = method.revision
    return found


def _drop_added_in_model_lists(plain: dict) -> None:
    """The model configs of a family's lists (`loss.teachers`, `loss.peers`) drop the model keys
    added later at their "as before" value, as `teacher` and `student` do."""
    for key, value in plain.get("loss", {}).items():
        if isinstance(value, list):
            plain["loss"][key] = [drop_added(entry, ADDED_IN_SECTIONS["model"])
                                  if isinstance(entry, dict) and "name" in entry else entry for entry in value]


def stable_section(kind: str, section_cfg) -> Any:
    """A model, data or optimiser config (`kind`: model | data | optim) as a store key hashes it:
    resolved, without the keys added to that section at their "as before" value, so that a store
    key too survives keys added later."""
    plain = OmegaConf.to_container(section_cfg, resolve=True)
    return OmegaConf.create(drop_added(plain, ADDED_IN_SECTIONS[kind]))


# --- model-store keys ---------------------------------------------------------------

# Bump when training code changes what a given config produces (loss, init, batching, RNG use).
ROUTINE_VERSION = 1

# Data keys that do not change what is learned.
_DATA_KEYS_IGNORED = ("root", "download", "eval_batch_size", "workers", "prefetch")


def key_for(model_cfg, data_cfg, optim_cfg, epochs: int, augment: bool, seed: int,
            precision: str = "32", variant: str | None = None, sync_bn: bool = False) -> tuple[str, dict]:
    """(hex key, the payload it hashes) for a model trained on labels alone. The device and
    `trainer.compile` are not part of the key (a teacher trained compiled on a GPU serves an eager
    CPU run: the same training up to float rounding); the precision is (bf16 ≠ float32 weights),
    and only when it is not the default, so float32 keys stay what they were. `variant` names a
    model trained some other way than a plain model on its labels (e.g. the exits of a multi-exit
    net); None keeps the keys of plain models what they were. `sync_bn` (batch norm over all the
    processes of a DDP job) counts only when set; the process count never does (docs/distributed.md)."""
    data = {k: v for k, v in OmegaConf.to_container(data_cfg, resolve=True).items() if k not in _DATA_KEYS_IGNORED}
    payload = {
        "model": OmegaConf.to_container(model_cfg, resolve=True),
        "data": data,
        "optim": OmegaConf.to_container(optim_cfg, resolve=True),
        "epochs": int(epochs),
        "augment": bool(augment),
        "seed": int(seed),
        "routine": ROUTINE_VERSION,
    }
    if str(precision) != "32":
        payload["precision"] = str(precision)
    if variant is not None:
        payload["variant"] = variant
    if sync_bn:
        payload["sync_bn"] = True
    return digest(payload), payload


def imported_key_for(model_cfg, data_cfg, source: dict, precision: str = "32") -> tuple[str, dict]:
    """(hex key, payload) of a model imported rather than trained (`teacher.checkpoint`): the
    weights' identity (`teacher_import.source_of`: a file's sha256, a model URI and version) and
    the model config without the path, so a moved file is the same entry; the data config (its
    test accuracy and its cached logits are measured on that data) and the precision as for a
    trained model."""
    model = {k: v for k, v in OmegaConf.to_container(model_cfg, resolve=True).items() if k != "checkpoint"}
    data = {k: v for k, v in OmegaConf.to_container(data_cfg, resolve=True).items() if k not in _DATA_KEYS_IGNORED}
    payload = {"model": model, "data": data, "imported": dict(source), "routine": ROUTINE_VERSION}
    if str(precision) != "32":
        payload["precision"] = str(precision)
    return digest(payload), payload


def logits_key_for(model_key: str, precision: str = "32") -> tuple[str, dict]:
    """(hex key, payload) of the training-split logits of the stored model `model_key`. They depend
    on that model and on the training split, and the data config that fixes the split is already
    in `model_key`; the precision they are computed in is added."""
    payload = {"logits_of": model_key, "split": "train", "precision": str(precision), "routine": ROUTINE_VERSION}
    return digest(payload), payload
