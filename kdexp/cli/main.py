"""The Hydra entry point: compose → validate → run → return the objective (for sweepers).

Bad settings end the process with one line on stderr and exit code 2, before any training.
Ctrl-C and SIGTERM (what SLURM and Kubernetes send before killing) end the run KILLED with its
checkpoint kept, and close an open sweep's parent run; a full disk ends it FAILED, in one line.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from pathlib import Path

import hydra
from omegaconf import DictConfig

from kdexp.config.checks import ConfigError
from kdexp.cli.exits import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED
from kdexp.config.paths import CONFIG_DIR, remove_unused_run_folder


RESUME_HINT = "the run is marked KILLED and its checkpoint kept: run the same command to resume"
NO_RUN_HINT = "it stopped before any MLflow run was started, so nothing is recorded: run the same command to start"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so it unwinds like Ctrl-C: the run ends KILLED."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated(signal.Signals(signum).name)


def handle_sigterm() -> None:
    """Turn SIGTERM, and SIGHUP (the terminal closed), into `Terminated` in this process (signals
    can only be set on the main thread; a launcher's worker thread keeps the default)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGHUP, _on_sigterm)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> "NoReturn":  # noqa: F821
    rank = f"rank {os.environ.get('RANK')}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    print(f"kdexp: error: {rank}{message}", file=sys.stderr)
    sys.exit(code)


def group_options(group: str) -> list[str]:
    folder = CONFIG_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def packaged_groups() -> dict[str, list[str]]:
    """Groups the defaults list chooses only under a package (`model@teacher`, `model@student`):
    `model=cnn` alone names none of them."""
    import re

    found: dict[str, list[str]] = {}
    for group, package in re.findall(r"^\s*-\s*(\w+)@(\w+)\s*:", (CONFIG_DIR / "config.yaml").read_text(), re.M):
        found.setdefault(group, []).append(package)
    return found


def check_group_choices(args: list[str]) -> None:
    """Refuse an override Hydra cannot parse, `group=unknown`, or a misspelt key, in one line
    (Hydra's own messages span several lines)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    # Hydra's flags whose value is the next word (`-cd DIR`): that word is no override.
    takes_value = {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name",
                   "-cd", "--config-dir", "--experimental-rerun"}
    candidates = [a for before, a in zip([None, *args], args)
                  if "=" in a and not a.startswith("-") and before not in takes_value]
    parser = OverridesParser.create()
    overrides = []
    for candidate in candidates:
        try:
            overrides.append(parser.parse_override(candidate))
        except HydraException as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else "a syntax error"
            hint = ("write $HOME/... or an absolute path: the shell does not expand ~ there"
                    if "~/" in candidate.partition("=")[2] else "quote values with special characters")
            fail(f"{candidate} is not a valid override ({reason}); {hint}, "
                 "see https://hydra.cc/docs/advanced/override_grammar/basic/")
    packaged = packaged_groups()
    for override in overrides:
        group = override.key_or_group
        if group in packaged and override.package is None and not override.is_add():
            value = override.get_value_element_as_str() if not override.is_sweep_override() else "..."
            choices = " or ".join(f"{group}@{p}={value}" for p in packaged[group])
            fail(f"{override.input_line} names no {group}: this config has {len(packaged[group])} "
                 f"({', '.join(packaged[group])}); choose {choices}")
        options = group_options(group)
        if not options or override.is_delete() or group.startswith("hydra/"):
            continue  # hydra/...: plugins add options (joblib, ray, ...); Hydra checks those itself
        if override.is_sweep_override():
            try:
                values = list(override.sweep_string_iterator())
            except Exception:  # ranges, intervals, ... are not group choices
                continue
        else:
            values = [override.get_value_element_as_str()]
        for value in values:
            if value not in options and value != "null":
                name = group if override.package is None else f"{group}@{override.package}"
                fail(f"{name}={value} is not an option of {group}; allowed: {', '.join(options)}")
    from kdexp.config.suggest import unknown_key  # a misspelt key: one line with the closest valid key

    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}
    if (problem := unknown_key(overrides, CONFIG_DIR, groups)) is not None:
        fail(problem)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _task(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from kdexp.data.expected import missing_data

    hydra_cfg = HydraConfig.get()
    if (problem := missing_data(cfg.data)) is not None:  # before the slow imports, leaving nothing
        if hydra_cfg.mode != RunMode.MULTIRUN:
            remove_unused_run_folder(Path(hydra_cfg.runtime.output_dir), Path(hydra_cfg.runtime.cwd))
        fail(problem)
    from kdexp.run.model_store import start_creating_tracking_store

    start_creating_tracking_store(cfg)  # a new store is created beside the imports below (torch, ~1 s), not after them
    from kdexp.distill import catalog  # noqa: F401  (catalog: families and terms register)
    from kdexp.run import experiment
    from kdexp.config.owners import refuse_ignored
    from kdexp.config.sections import validate
    from kdexp.run.loop import NonFiniteLoss
    from kdexp.run.faults import RankFailed

    from kdexp.run.sweep import parent_for_job, threads_per_job

    handle_sigterm()  # again here: a launcher's worker process runs jobs without `main`
    if _distributed_env():  # one output folder for the job: rank 0's, sent to the other ranks
        from kdexp.run import distributed

        if not distributed.current().active:  # submitit's tasks (SLURM) run the job without `main`
            distributed.init(cfg.trainer.dist_timeout)
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        distributed.share_output_dir(hydra_cfg.runtime.output_dir, hydra_cfg.sweep.dir if multirun else None)
    try:
        parent = parent_for_job(hydra_cfg, cfg.tracking)
        if parent is not None and cfg.trainer.threads == 0:
            cfg.trainer.threads = threads_per_job(hydra_cfg)
        typed = validate(cfg)
        if hydra_cfg.mode != RunMode.MULTIRUN:  # a sweep's jobs were checked together, at its start
            refuse_ignored([typed], hydra_cfg.overrides.task)
        output_dir = Path(hydra_cfg.runtime.output_dir)
        hydra_dir = output_dir / hydra_cfg.output_subdir if hydra_cfg.output_subdir else None
        return experiment.run(typed, list(hydra_cfg.overrides.task), hydra_dir, parent)
    except ConfigError as err:
        fail(str(err))
    except NonFiniteLoss as err:
        fail(str(err), code=1)
    except RankFailed as err:
        fail(f"{err}; the run is marked FAILED and its checkpoints kept: run the same command to resume", code=1)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        where = f" while writing {err.filename}" if err.filename else ""
        fail(f"no space left on the device{where}; the run is marked FAILED and its last complete "
             f"checkpoint kept: free some space (or move trainer.checkpoint_dir) and run the same "
             f"command to resume", code=1)


def check_output_dirs(args: list[str]) -> None:
    """Refuse an output folder that cannot be created before Hydra tries (its error is a traceback)."""
    from kdexp.config.paths import unwritable

    folders = {"hydra.run.dir": "outputs", "hydra.sweep.dir": "outputs"}
    for arg in args:
        key, _, value = arg.partition("=")
        if key in folders and value:
            folders[key] = value.split("${")[0] or "."
    for key, folder in folders.items():
        reason = unwritable(Path(folder).absolute())
        if reason:
            fail(f"{key}: cannot create output folder {Path(folder).absolute()}: {reason}")


def _distributed_env() -> bool:
    """Started by torchrun or an srun step of several tasks (kdexp/run/distributed.py), read
    without importing torch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1


def join_job(args: list[str]) -> None:
    """Under torchrun or srun: join the job's process group before Hydra composes, so that every
    rank writes to rank 0's output folder."""
    from kdexp.config.sections import TrainerConfig
    from kdexp.run import distributed

    try:
        distributed.init(distributed.timeout_from(args, TrainerConfig.dist_timeout))
    except ConfigError as err:
        fail(str(err))
    sys.argv.extend(distributed.follower_overrides())


def main() -> None:
    args = sys.argv[1:]
    if not os.environ.get("HYDRA_FULL_ERROR"):
        check_group_choices(args)
        check_output_dirs(args)
    from kdexp.run.sweep import SweepRefused, close_interrupted_sweep

    handle_sigterm()
    if _distributed_env():
        join_job(args)
    try:
        _task()
    except SweepRefused as err:
        fail(str(err))
    except SystemExit as stop:  # a job's one-line error ends the whole sweep: close its parent
        if stop.code not in (0, None):
            close_interrupted_sweep("FAILED")
        raise
    except KeyboardInterrupt as err:
        # A second signal while closing would print a traceback: closing is short, let it finish.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        from kdexp.tracking.connect import store_opened

        parent = close_interrupted_sweep()
        sweep = f"; sweep parent run {parent} closed as KILLED" if parent else ""
        hint = RESUME_HINT if parent or store_opened() else NO_RUN_HINT  # no store opened yet: no run exists
        if isinstance(err, Terminated):
            name = err.args[0] if err.args else "SIGTERM"
            fail(f"terminated ({name}); {hint}{sweep}",
                 EXIT_TERMINATED if name == "SIGTERM" else 128 + signal.Signals[name].value)
        fail(f"interrupted; {hint}{sweep}", EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
