"""Multirun → MLflow structure: a Hydra callback that opens one parent run per sweep.

It runs in the launching process, so it also creates the store and the experiment before any
job starts. Every launch gets its own parent run (and, through `${kdexp.launch:}` in
`hydra.sweep.dir`, its own folder), even two launched in the same second. Jobs find their parent through the
environment (inherited by joblib, submitit and SLURM jobs) or, where it does not reach them (Ray
workers inherit the environment of `ray start`, not of the launcher), by the sweep folder tag.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def sweep_dir_of(hydra_cfg) -> str:
    """The sweep folder as an absolute path, the same in the launcher and in every job: a relative
    `hydra.sweep.dir` is taken from `hydra.runtime.cwd`, the folder the sweep config was composed
    in (the launching shell's for Ray, whose workers run elsewhere; the submit folder for SLURM)."""
    folder = Path(str(hydra_cfg.sweep.dir))
    if not folder.is_absolute():
        runtime = hydra_cfg.get("runtime") or {}
        folder = Path(runtime.get("cwd") or os.getcwd()) / folder
    return str(folder.resolve())


class SweepRefused(BaseException):
    """The base config of a sweep is bad: one line, before any job. A BaseException, like
    KeyboardInterrupt, so that Hydra's error report (a traceback for any Exception) lets it
    through to the entry point, which prints it."""


class MlflowSweep(Callback):
    # The parent run this process has open, so that an interrupt (Ctrl-C, SIGTERM), which skips
    # `on_multirun_end`, can still close it.
    open_parent: str | None = None

    def __init__(self) -> None:
        self.parent_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from kdexp.data.expected import missing_data
        from kdexp.run.model_store import ModelStore, start_creating_tracking_store

        if (problem := missing_data(config.data)) is not None:  # before any import, store or folder
            raise SweepRefused(problem)
        start_creating_tracking_store(config)  # a new store is created beside the imports below (torch, ~1 s), not after them
        from kdexp.distill import catalog  # noqa: F401  (catalog: families and terms register)
        from kdexp import tracking
        from kdexp.config.owners import refuse_ignored
        from kdexp.config.sections import ConfigError, flatten, validate

        from kdexp.run import faults
        from kdexp.run.teacher_import import PINNED_ENV, pin_sweep_teachers

        try:  # the base config of the sweep: a bad value stops here, before any job
            typed = validate(config)
            configs = job_configs(config, typed)
            refuse_ignored(configs, config.hydra.overrides.task)
            # The store's experiment too: created here, its artifact location is the launcher's
            # (a relative ./mlruns would otherwise be taken in whichever job's folder came first,
            # e.g. a Ray worker's), and parallel jobs never race to create it.
            tracking.prepare(typed.tracking.uri, ModelStore(typed.store, typed.tracking).experiment)
            pinned = pin_sweep_teachers(configs)  # every job must find its teacher as it is now
        except ConfigError as err:
            raise SweepRefused(str(err)) from None
        overrides, sweep_dir = list(config.hydra.overrides.task), sweep_dir_of(config.hydra)
        self.parent_id = tracking.start_sweep(typed.tracking.uri, typed.tracking.experiment, sweep_dir, overrides,
                                              sweep_axes(overrides), flatten(typed),
                                              {PINNED_TAG: pinned} if pinned else None)
        MlflowSweep.open_parent = self.parent_id
        os.environ[tracking.SWEEP_ENV] = self.parent_id
        _set_env(PINNED_ENV, pinned)
        if _in_workers(config.hydra):
            faults.stop_workers_first(self.parent_id, typed.tracking.uri, sweep_dir)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """In a worker process (joblib): refuse a job taken after the launcher was stopped, else
        mark the worker busy (kdexp/run/faults.py)."""
        if _in_workers(config.hydra):
            from kdexp.run.faults import job_started

            job_started(sweep_dir_of(config.hydra))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """Keep the parent's results table current as jobs finish (in the job's process; a job
        that cannot see its parent's id, e.g. on a Ray worker, leaves it to the launcher)."""
        if _in_workers(config.hydra):
            from kdexp.run.faults import job_ended

            job_ended(sweep_dir_of(config.hydra))
        parent = self.parent_id or os.environ.get(SWEEP_ENV_NAME)
        if parent:
            describe_parent(parent, (config.get("tracking") or {}).get("uri"))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from kdexp import tracking

        if self.parent_id is not None:
            from kdexp.run.faults import restore_stop_signals
            from kdexp.run.teacher_import import PINNED_ENV

            restore_stop_signals()
            os.environ.pop(PINNED_ENV, None)
            status, best = tracking.end_sweep(self.parent_id)
            describe_parent(self.parent_id, config.tracking.get("uri"))
            print(f"kdexp: sweep parent run {self.parent_id} {status}")
            group = best_group_line(self.parent_id, config.tracking.get("uri"))
            if group is not None:  # seeds swept: one lucky seed is not a result, a setting is
                print(f"kdexp: best setting: {group}; compare all settings with: kdexp-report")
            elif best is not None:
                print(f"kdexp: best job: {best['name']} → {best['objective']} = {best['value']:.2f} "
                      f"(run {best['run_id']}); compare all jobs with: kdexp-report")
            print(f"kdexp: MLflow store: {tracking.tracking_store_location(config.tracking.get('uri'))}")
            uri = tracking.resolve_uri(config.tracking.get("uri"))
            print(f"kdexp: every job's results in the UI: {tracking.sweep_link(self.parent_id)}  {tracking.adapt_note(uri)}")
            os.environ.pop(tracking.SWEEP_ENV, None)
            MlflowSweep.open_parent = None


def job_configs(config: DictConfig, base) -> list:
    """The typed config of every kind of job the sweep's overrides expand to (Hydra's basic
    sweeper's expansion), composed without running anything; the base config `base` when the
    overrides do not expand to a list (a sweeper's own search space, e.g. Optuna's intervals).
    Jobs that differ only in numbers (temperatures, weights, seeds) are one kind: a number never
    changes which settings a family and method read, and composing a job costs ~0.2 s. A job
    whose config is refused is left out: it fails on its own, with its own line."""
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from kdexp.config.checks import ConfigError
    from kdexp.config.sections import validate

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    try:
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception:  # noqa: BLE001 - not a list of values: only the sweeper knows the jobs
        return [base]
    kinds = {tuple(o for o in job if not _is_number(o.partition("=")[2])): job for job in jobs}
    typed = []
    for overrides in kinds.values():
        try:
            typed.append(validate(compose(config_name="config", overrides=list(overrides))))
        except ConfigError:
            continue
    return typed


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


SWEEP_ENV_NAME = "KDEXP_PARENT_RUN_ID"  # = tracking.SWEEP_ENV, without importing MLflow here
PINNED_TAG = "kdexp.pinned_teachers"  # on the parent: `teacher_import.pin_sweep_teachers`, for jobs the environment misses


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _in_workers(hydra_cfg) -> bool:
    """Whether the jobs run in the launcher's worker processes (Hydra's joblib launcher)."""
    return "joblib" in str((hydra_cfg.get("launcher") or {}).get("_target_", ""))


def sweep_axes(overrides: list[str]) -> list[str]:
    """The sweep overrides of a launch (`loss.temperature=2,8`, `seed=range(3)`), as written."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.input_line for o in parsed if o.is_sweep_override()]


def group_label(values: dict, axes: list[str]) -> str:
    """`loss.temperature:2 loss.alpha:0.5`: a setting as an MLflow metric-name prefix (which takes
    no `=`; any other character it refuses becomes `_`)."""
    from kdexp.report.values import show

    text = " ".join(f"{k}:{show(values.get(k))}" for k in axes) or "mean"  # only seeds swept
    return re.sub(r"[^\w./\- :]", "_", text)


def describe_parent(parent_id: str, uri: str | None) -> None:
    """Write the parent's description: the ranked results table (swept values, student,
    baseline, KD gain; seeds averaged), and, where seeds are averaged, each setting's means as
    metrics. Best effort: a table that cannot be built now (no job finished yet, a store that
    is busy) must not stop the sweep; the launcher writes it again at the end."""
    from kdexp import tracking
    from kdexp.report.files import markdown
    from kdexp.report.table import ReportError, build

    try:
        parent = tracking.find_sweep(uri, "", parent_id)
        report = build(parent, tracking.sweep_children(uri, parent))
    except (ReportError, tracking.StoreError):
        return
    metrics = {}
    if report.by_seed:
        for entry in report.ranked:
            for metric in (m for m in report.metrics if m.key != "wall_time_s"):
                if (mean := entry.mean(metric.key)) is not None:
                    metrics[f"{group_label(entry.values, report.axes)}/{metric.key}"] = mean
    try:
        tracking.describe_sweep(parent_id, markdown(report), metrics)
    except Exception as err:  # noqa: BLE001 - e.g. a store busy with parallel jobs: the jobs' results are safe
        print(f"kdexp: note: the results table of sweep {parent_id} was not updated this time "
              f"({type(err).__name__}: {' '.join(str(err).split())[:200]})")


def best_group_line(parent_id: str, uri: str | None) -> str | None:
    """When seeds are swept: the setting with the best mean over its seeds, with its spread and its
    KD gain's 95 % interval (`kdexp.report.paired`); None for a sweep without seeds."""
    from kdexp import tracking
    from kdexp.report.paired import build_paired
    from kdexp.report.table import ReportError, build

    try:
        parent = tracking.find_sweep(uri, "", parent_id)
        report = build(parent, tracking.sweep_children(uri, parent))
        if not report.by_seed:
            return None
        paired = build_paired(report)
    except (ReportError, tracking.StoreError):
        return None
    g = max(paired.groups, key=lambda g: g.student_mean)
    spread = f" ± {g.student_std:.2f}" if g.student_std is not None else ""
    text = f"{g.group} → student_acc {g.student_mean:.2f}{spread} over {g.n} seed(s)"
    if g.gain_mean is not None:
        ci = f" [{g.gain_ci[0]:+.2f}, {g.gain_ci[1]:+.2f}] (95 %)" if g.gain_ci else " (no interval: one seed)"
        text += f", KD gain {g.gain_mean:+.2f}{ci}"
    return text


def close_interrupted_sweep(status: str = "KILLED") -> str | None:
    """Close this process's open sweep parent, which `on_multirun_end` will not (Ctrl-C, SIGTERM:
    KILLED; a job that stopped the sweep with an error: FAILED); returns its id."""
    from kdexp import tracking

    parent = MlflowSweep.open_parent
    if parent is None:
        return None
    from kdexp.run.faults import restore_stop_signals
    from kdexp.run.teacher_import import PINNED_ENV

    MlflowSweep.open_parent = None
    os.environ.pop(tracking.SWEEP_ENV, None)
    os.environ.pop(PINNED_ENV, None)
    restore_stop_signals()
    try:
        tracking.end_sweep(parent, status=status)
    except Exception:  # noqa: BLE001 - the store itself may be the trouble; the interrupt is what to report
        return None
    return parent


def _opens_parents(hydra_cfg) -> bool:
    callbacks = hydra_cfg.get("callbacks") or {}
    return any(str((cb or {}).get("_target_", "")).endswith("MlflowSweep") for cb in callbacks.values())


def parent_for_job(hydra_cfg, tracking_cfg) -> str | None:
    """The parent run of this job when it runs inside a multirun, else None. `tracking_cfg` is the
    job's `tracking` section (or just the experiment name, for the store the environment names).
    A job of a kdexp sweep that cannot find its parent stops with one line: its runs would
    otherwise land, unparented, in a store the launcher never looks at."""
    from hydra.types import RunMode

    from kdexp import tracking
    from kdexp.config.checks import ConfigError

    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    if isinstance(tracking_cfg, str):
        uri, experiment = None, tracking_cfg
    else:
        uri, experiment = tracking_cfg.get("uri"), tracking_cfg.experiment
    found = os.environ.get(tracking.SWEEP_ENV)
    if found:
        return found
    sweep_dir = sweep_dir_of(hydra_cfg)
    found = tracking.find_sweep_parent(experiment, sweep_dir, uri)
    if found is not None:  # the launcher's environment did not reach this job: its pinned teachers neither
        from kdexp.run.teacher_import import PINNED_ENV

        _set_env(PINNED_ENV, tracking.find_sweep(uri, "", found).tags.get(PINNED_TAG))
    if found is None and _opens_parents(hydra_cfg):
        raise ConfigError(
            f"this sweep job found no parent run for sweep folder {sweep_dir} in experiment "
            f"'{experiment}' of {tracking.resolve_uri(uri)}; on a cluster the launching shell's "
            f"MLFLOW_TRACKING_URI may not reach the job: pass tracking.uri=<the tracking URI> on the command line")
    return found


def _cores_here() -> int:
    try:  # the cores this process may run on (a SLURM or taskset allocation), not the machine's
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def threads_per_job(hydra_cfg) -> int:
    """torch threads for one job of a sweep: what the launcher gave it.
    joblib: the cores here shared by `n_jobs` concurrent jobs; submitit (SLURM or local):
    `cpus_per_task`, else SLURM's `SLURM_CPUS_PER_TASK`, else the cores this job may use; Ray:
    `ray.remote.num_cpus` (Ray's default reservation is 1 CPU per task); basic launcher: all cores."""
    launcher = hydra_cfg.get("launcher", {}) or {}
    target = str(launcher.get("_target_", ""))
    cores = _cores_here()
    if "submitit" in target:
        cpus = launcher.get("cpus_per_task") or os.environ.get("SLURM_CPUS_PER_TASK")
        return max(1, int(cpus)) if cpus else cores
    if "ray_launcher" in target:
        remote = (launcher.get("ray") or {}).get("remote") or {}
        return max(1, int(remote.get("num_cpus") or 1))
    jobs = launcher.get("n_jobs", 1) or 1
    if jobs == -1:
        jobs = cores
    return max(1, cores // max(1, int(jobs)))
