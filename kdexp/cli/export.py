"""`kdexp-export RUN_ID_OR_STORE_KEY PATH`: a trained teacher or student as a plain state-dict file
(tensors only), which `teacher.checkpoint=PATH` reads back and any torch code loads with
`torch.load(PATH, weights_only=True)` (issue 16)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from kdexp.cli.exits import EXIT_BAD_INPUT
from kdexp.config.checks import ConfigError

DESCRIPTION = ("Write a model kdexp trained as a plain state-dict file: a run's teacher (its model store "
               "entry) or student (the model the run logged), or a store entry by its key.")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdexp-export", description=DESCRIPTION)
    p.add_argument("ref", metavar="RUN_ID_OR_STORE_KEY",
                   help="an MLflow run id of kdexp (or of a store entry), or a model store key (24 hex digits)")
    p.add_argument("path", metavar="PATH", help="the .pt file to write")
    p.add_argument("--role", default="teacher",
                   help="which model of a run: teacher (default), student, teacher0, ... (ignored for a store entry)")
    p.add_argument("--experiment", default=None,
                   help="for a store key only: look in <EXPERIMENT>-store (default: every experiment; "
                        "a run id is found wherever it is)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    return p


def export(ref: str, path: str | Path, role: str = "teacher", experiment: str | None = None,
           tracking_uri: str | None = None) -> str:
    """Write the state dict of `ref` to `path`; returns what was written."""
    import torch

    from kdexp import tracking

    target = Path(path)
    if not target.parent.is_dir():
        raise ConfigError(f"PATH={path}: folder {target.parent} does not exist")
    state, what = tracking.exported_state(ref, role, experiment, tracking_uri)
    torch.save({name: value.detach().cpu().clone() for name, value in state.items()}, target)
    return what


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        what = export(args.ref, args.path, args.role, args.experiment, args.tracking_uri)
    except ConfigError as err:
        print(f"kdexp-export: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"kdexp-export: wrote {what} to {args.path} (a state dict; teacher.checkpoint={args.path} reads it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
