"""Content-addressed store of trained models (teachers, student-alone baselines) and of the
training-split logits of those models, which the students of a sweep share.

A model is keyed by everything that determines its trained weights (kdexp/config/identity.py:
its config, the data config, the optimiser, the epochs, the seed, the routine's version). Entries are
MLflow runs in a store experiment (`<tracking.experiment>-store`) holding `model.pt` (a state
dict; `{"train": logits}` for a logits entry) and `history.json`, found by the tag
`kdexp.store_key`: so the store works the same on a local sqlite store and on a remote tracking
server. A file lock per key makes parallel jobs of a sweep train each model once: the first
trains, the others wait and load. An entry whose files are gone (a deleted `mlruns/`) is marked
FAILED in the store and the model trained again, with one line saying so.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def key_lock(lock_dir: str | Path, key: str) -> Iterator[None]:
    """Exclusive lock on one key across processes (blocking; `filelock` works on every OS)."""
    from filelock import FileLock

    folder = Path(lock_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f"{key}.lock")):
        yield


class ModelStore:
    """Trained (and imported) models and teacher logits by key, as runs of the store experiment."""

    def __init__(self, cfg, tracking_cfg):
        self.reuse = bool(cfg.reuse)
        self.lock_dir = cfg.lock_dir
        self.experiment = f"{tracking_cfg.experiment}-store"

    @contextlib.contextmanager
    def entry(self, key: str, payload: dict, label: str) -> Iterator["Entry"]:
        """The entry of `key`, locked across processes while the block runs: `entry.state` and
        `entry.history` hold a stored model on a hit (None on a miss or with `store.reuse=false`);
        on a miss the block makes the model and calls `entry.save(state, history)`."""
        from kdexp import tracking
        from kdexp.run import distributed
        from kdexp.run.console import console

        if not distributed.current().is_main:  # rank 0 looks the key up; a hit's model comes with its answer
            entry = _FollowerEntry(self.experiment, key, payload, label)
            found = distributed.broadcast()
            if found is not None:
                entry.run_id, entry.state, entry.history = found
            yield entry
            return

        def lost(run_id: str, reason: str) -> None:
            console.print(f"kdexp: model store entry {run_id} ({label}) is unusable: {reason}; "
                          f"marked FAILED, training it again", markup=False, highlight=False)

        with key_lock(self.lock_dir, key):
            found = tracking.find_stored(self.experiment, key, lost) if self.reuse else None
            entry = Entry(self.experiment, key, payload, label, reuse=self.reuse)
            if found is not None:
                entry.run_id, entry.state, entry.history = found
            distributed.broadcast(found)  # rank 0's answer (and a hit's model) to the other ranks
            yield entry


@dataclass
class Entry:
    """One model-store entry, as `ModelStore.entry` hands it out."""

    experiment: str
    key: str
    payload: dict
    label: str
    run_id: str | None = None
    state: dict | None = None
    history: dict = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return self.state is not None

    reuse: bool = True  # store.reuse: false makes and stores the model whatever the store holds
    stored_elsewhere: bool = False  # another machine stored the key while this one made it

    def save(self, state: dict, history: dict, tags: dict | None = None) -> None:
        """Record a model made on a miss (`tags`: where an import came from). The file lock
        serialises one machine only: two machines missing the same key both make it, so the
        store is looked at again first, and an entry another machine finished meanwhile is used
        instead (its state and history here; `stored_elsewhere` tells the caller to load it):
        one entry per key, and every run distilled from the same weights."""
        from kdexp import tracking
        from kdexp.run import distributed
        from kdexp.run.console import console

        # Under DDP the other ranks keep the weights they trained with rank 0: its own entry, as before.
        look_again = self.reuse and not distributed.current().active
        found = tracking.find_stored(self.experiment, self.key) if look_again else None
        if found is not None:
            self.run_id, self.state, self.history = found
            self.stored_elsewhere = True
            console.print(f"kdexp: {self.label}: stored by another process while this one made it "
                          f"(run {self.run_id}); using that entry", markup=False, highlight=False)
            return
        self.run_id = tracking.save_stored(self.experiment, self.key, self.payload, self.label, state, history, tags)
        self.state, self.history = state, history


class _FollowerEntry(Entry):
    """The entry as a rank other than 0 holds it: on a miss it trains with rank 0, which saves."""

    def save(self, state: dict, history: dict, tags: dict | None = None) -> None:
        self.state, self.history = state, history


def start_creating_tracking_store(cfg) -> None:
    """Have a child process create the new local tracking store of a composed config, with the
    experiments of its runs and of its model store, while this process goes on starting
    (kdexp/tracking/create.py; nothing happens for a store that exists or a server)."""
    from kdexp.tracking.create import start

    start(cfg.tracking.get("uri"), [cfg.tracking.experiment, ModelStore(cfg.store, cfg.tracking).experiment])
