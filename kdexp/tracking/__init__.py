"""The only package that talks to MLflow, one module per job:

- `connect`: which store, whether it can work, creating it once (safe from parallel processes);
- `runs`: the run writer; `lookup`: the earlier run of a config;
- `model_store`: the model store's entries; `sweeps`: parent runs of multiruns;
- `imported`: MLflow models as teachers (`teacher.checkpoint`), and what `kdexp-export` writes;
- `reader`: sweeps and their jobs as plain records, for `kdexp-report`;
- `names`: run names that tell a sweep's jobs apart; `ui`: what the MLflow UI opens on (the
  experiment kind, saved run-list views behind the printed links, rounded figures).

MLflow itself is imported inside functions, so `kdexp --cfg job` and `--help` never pay for it.
"""

from kdexp.tracking.connect import (DEFAULT_URI, check_local_store, git_commit, prepare, resolve_uri,
                                    tracking_store_location, ui_hint)
from kdexp.tracking.imported import exported_state, load_model_state, model_version
from kdexp.tracking.lookup import PreviousRun, find_run
from kdexp.tracking.model_store import find_stored, save_stored
from kdexp.tracking.reader import (RunRecord, StoreError, find_sweep, log_report_artifacts,
                                   log_report_summary, missing_local_store, sweep_children)
from kdexp.tracking.runs import Run
from kdexp.tracking.sweeps import (SWEEP_ENV, describe_sweep, end_sweep, find_sweep_parent, note_reused, start_sweep,
                                   sweep_link)
from kdexp.tracking.ui import adapt_note

__all__ = [
    "DEFAULT_URI", "PreviousRun", "Run", "RunRecord", "SWEEP_ENV", "StoreError", "check_local_store",
    "end_sweep", "exported_state", "find_run", "load_model_state", "model_version", "find_stored", "find_sweep", "find_sweep_parent", "git_commit",
    "log_report_artifacts", "log_report_summary", "missing_local_store", "note_reused", "prepare", "resolve_uri", "save_stored",
    "start_sweep", "sweep_children", "ui_hint", "tracking_store_location", "describe_sweep", "sweep_link", "adapt_note",
]
