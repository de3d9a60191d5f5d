"""Content-addressed store of trained models (teachers, student-alone baselines) and of the
training-split logits of those models, which the students of a sweep share.

A model is keyed by everything that determines its trained weights: its config, the data config
(augmentation included), the optimiser, the epochs, the seed its init and batch order come from,
and `ROUTINE_VERSION`, bumped whenever the training routine changes its numerics. Entries are
MLflow runs in a store experiment (`<tracking.experiment>-store`) holding `model.pt` (a state
dict; `{"train": logits}` for a logits entry) and `history.json`, found by the tag
`kdexp.store_key`: so the store works the same on a local sqlite store and on a remote tracking
server. A file lock per key makes parallel jobs of a sweep train each model once: the first
trains, the others wait and load. An entry whose files are gone (a deleted `mlruns/`) is marked
FAILED in the store and the model trained again, with one line saying so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Callable, Iterator

from omegaconf import OmegaConf

# Bump when training code changes what a given config produces (loss, init, batching, RNG use).
ROUTINE_VERSION = 1

# Data keys that do not change what is learned.
_DATA_KEYS_IGNORED = ("root", "download", "eval_batch_size")


def key_for(model_cfg, data_cfg, optim_cfg, epochs: int, augment: bool, seed: int,
            precision: str = "32", variant: str | None = None) -> tuple[str, dict]:
    """(hex key, the payload it hashes) for a model trained on labels alone. The device and
    `trainer.compile` are not part of the key (a teacher trained compiled on a GPU serves an eager
    CPU run: the same training up to float rounding); the precision is (bf16 ≠ float32 weights),
    and only when it is not the default, so float32 keys stay what they were. `variant` names a
    model trained some other way than a plain model on its labels (e.g. the exits of a multi-exit
    net); None keeps the keys of plain models what they were."""
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
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return digest[:24], payload


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
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return digest[:24], payload


def logits_key_for(model_key: str, precision: str = "32") -> tuple[str, dict]:
    """(hex key, payload) of the training-split logits of the stored model `model_key`. They depend
    on that model and on the training split, and the data config that fixes the split is already
    in `model_key`; the precision they are computed in is added."""
    payload = {"logits_of": model_key, "split": "train", "precision": str(precision), "routine": ROUTINE_VERSION}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return digest[:24], payload


@contextlib.contextmanager
def key_lock(lock_dir: str | Path, key: str) -> Iterator[None]:
    """Exclusive lock on one key across processes (blocking; `filelock` works on every OS)."""
    from filelock import FileLock

    folder = Path(lock_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f"{key}.lock")):
        yield


class ModelStore:
    """`get_or_train(key, ...)`: the stored model on a hit, else train it, store it, return it."""

    def __init__(self, cfg, tracking_cfg):
        self.reuse = bool(cfg.reuse)
        self.lock_dir = cfg.lock_dir
        self.experiment = f"{tracking_cfg.experiment}-store"

    def get_or_train(self, key: str, payload: dict, label: str,
                     load_into: Callable[[dict], None],
                     train: Callable[[], tuple[dict, dict]], tags: dict | None = None,
                     made: str = "trained") -> tuple[str, str, dict]:
        """Returns (source, store run id, history). `train()` returns (state_dict, history);
        `load_into(state_dict)` loads a stored one. source is 'store' on a hit, `made` otherwise
        ('imported' for a checkpoint); `tags` go on a new entry (where an import came from)."""
        from kdexp import tracking
        from kdexp.console import console

        def lost(run_id: str, reason: str) -> None:
            console.print(f"kdexp: store entry {run_id} ({label}) is unusable: {reason}; "
                          f"marked FAILED, training it again", markup=False, highlight=False)

        with key_lock(self.lock_dir, key):
            if self.reuse:
                found = tracking.find_stored(self.experiment, key, lost)
                if found is not None:
                    run_id, state, history = found
                    load_into(state)
                    return "store", run_id, history
            state, history = train()
            run_id = tracking.save_stored(self.experiment, key, payload, label, state, history, tags)
            return made, run_id, history


def start_creating(cfg) -> None:
    """Have a child process create the new local MLflow store of a composed config, with the
    experiments of its runs and of its model store, while this process goes on starting
    (kdexp/tracking/create.py; nothing happens for a store that exists or a server)."""
    from kdexp.tracking.create import start

    start(cfg.tracking.get("uri"), [cfg.tracking.experiment, ModelStore(cfg.store, cfg.tracking).experiment])
