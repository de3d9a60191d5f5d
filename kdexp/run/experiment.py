"""One experiment: data loaded once, the chosen family run through a `Context`, everything tracked.

The run lifecycle lives here (`run`, `_run`, `_track`); the `Context` a family runs in is
kdexp/run/context.py, the device helpers kdexp/run/devices.py, the fit checks kdexp/run/preflight.py, and the run's
tags and name kdexp/run/metadata.py.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from kdexp.data.sources import open_source
from kdexp.run import distributed, faults
from kdexp.run.checkpoints import Checkpoints
from kdexp.run.console import console, summary
from kdexp.run.context import Context
from kdexp.run.devices import available_devices, describe_device, resolve_device  # noqa: F401  (public names)
from kdexp.run.preflight import check_models_fit as _check_models_fit, check_methods_fit
from kdexp.run.metadata import default_run_name, run_params, run_tags
from kdexp.run.model_store import ModelStore
from kdexp.run.teacher_import import check_checkpoints


def check_models_fit(cfg, source) -> None:
    """Every model takes the data's inputs, and the distillation methods find their layers."""
    _check_models_fit(cfg, source)
    check_methods_fit(cfg, source)


def run(cfg: DictConfig, overrides: list[str], hydra_dir: Path | None = None,
        parent_run_id: str | None = None) -> float:
    """Train and track one experiment described by a validated config; returns the objective.

    The run's identity is its config (`identity.run_key`). With `trainer.rerun=skip` (default) a
    FINISHED run of the same config is not repeated, and an interrupted one (RUNNING after a crash,
    FAILED, KILLED) is resumed in place from its checkpoints; `trainer.rerun=force` starts anew."""
    _collect_previous_run()
    return _run(cfg, overrides, hydra_dir, parent_run_id)


_previous_runs = 0  # runs this process has done: a sweep's jobs under Hydra's basic launcher, a joblib worker's


def _collect_previous_run() -> None:
    """Free what the previous run of this process left behind before this one allocates.

    A run's objects hold reference cycles (the context logs through its own bound method, phases
    close over their models), which only the cyclic collector frees, and it counts objects, not
    bytes: without this, each job of an in-process sweep kept the models of the jobs before it.
    Collected at the start of the next run rather than at the end of each, a single run pays
    nothing; `gc.freeze` sets every survivor aside (imported modules: ~10^6 objects with torch and
    MLflow), so each collection, this one and the automatic ones during training, looks at one
    run's objects only (ms instead of ~0.4 s)."""
    global _previous_runs
    if _previous_runs:
        gc.collect()
    gc.freeze()  # the collector never looks at the survivors again: the price of cheap collections
    _previous_runs += 1


def _run(cfg: DictConfig, overrides: list[str], hydra_dir: Path | None, parent_run_id: str | None) -> float:
    from kdexp import tracking
    from kdexp.run.checkpoints import run_lock
    from kdexp.config.identity import run_key

    started = time.perf_counter()  # wall time includes loading data and opening the store
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    world = distributed.current()  # under torchrun or srun: this rank, reading its shard of each batch
    device = distributed.local_device(resolve_device(cfg.trainer.device, cfg.trainer.precision))
    source = open_source(cfg.data, device, world.shard)
    distributed.check_batches(source.size("train"), cfg.data.batch_size)
    distributed.check_settings(cfg, device)
    check_models_fit(cfg, source)
    if world.is_main:
        tracking.prepare(cfg.tracking.uri, cfg.tracking.experiment)
    imported = check_checkpoints(cfg, source.input_shape, source.num_classes)  # a runs:/ URI needs the store
    key = run_key(cfg, device.type, imported)
    if not world.is_main:  # rank 0 decides skip or resume and opens the one MLflow run
        decision, value = distributed.broadcast()
        if decision == "skip":
            return value
        checkpoints = Checkpoints(cfg.trainer.checkpoint_dir, key, value)
        return _track(cfg, hydra_dir, source, device, distributed.FollowerRun(value), checkpoints, started)
    with run_lock(cfg.trainer.checkpoint_dir, key):
        previous = tracking.find_run(cfg.tracking.experiment, key) if cfg.trainer.rerun == "skip" else None
        if previous is not None and previous.status == "FINISHED":
            console.print(f"kdexp: this exact config already FINISHED as MLflow run {previous.run_id}; "
                          f"skipped (trainer.rerun=force runs it again)")
            if parent_run_id:
                tracking.note_reused(parent_run_id, overrides, previous.run_id)
            distributed.broadcast(("skip", previous.objective))
            return previous.objective
        resume_id = previous.run_id if previous is not None else None
        tags = {**run_tags(cfg, overrides), "kdexp.run_key": key,
                "kdexp.role": "job" if parent_run_id else "single",
                "kdexp.device": describe_device(device, cfg.trainer.precision, cfg.trainer.compile),
                **({"kdexp.processes": str(world.size)} if world.active else {})}
        run = tracking.Run(cfg.tracking, default_run_name(cfg, overrides), tags, parent_run_id, resume_id)
        distributed.broadcast(("run", run.run_id))
        if resume_id:
            console.print(f"kdexp: resuming MLflow run {resume_id} ({previous.status}) from its checkpoints")
        checkpoints = Checkpoints(cfg.trainer.checkpoint_dir, key, run.run_id)
        return _track(cfg, hydra_dir, source, device, run, checkpoints, started)


def _track(cfg, hydra_dir, source, device, run, checkpoints, started: float) -> float:
    """Everything inside the MLflow run: a raise ends it FAILED (KILLED on Ctrl-C or SIGTERM),
    error recorded, checkpoints kept for the resume; a FINISHED run's checkpoints are removed
    unless `trainer.keep_checkpoints`."""
    from kdexp.report import plots
    from kdexp.distill.families import FAMILIES

    try:
        changed = run.params(run_params(cfg))
        if changed:
            console.print(f"kdexp: resumed with other values of {', '.join(changed)} (settings that do not "
                          f"change results); recorded as tags kdexp.resumed_with.*", markup=False)
        run.text(OmegaConf.to_yaml(cfg), "config.yaml")
        if hydra_dir is not None:
            run.folder(hydra_dir, "hydra")
        store = ModelStore(cfg.store, cfg.tracking)
        ctx = Context(cfg, source, run, device, checkpoints, store)
        outcome = FAMILIES[cfg.loss.name](ctx).run()
        wall = time.perf_counter() - started
        outcome.metrics["wall_time_s"] = wall
        for history in ctx.histories.values():  # the best- and validation-selected epochs beside the last
            outcome.metrics.update(history.epoch_selected())
        run.metrics(outcome.metrics)
        run.tags({"kdexp.objective": outcome.objective})
        if not distributed.current().is_main:  # rank 0 logs the figure and the model, and prints
            return float(outcome.metrics[outcome.objective])
        figure = plots.learning_curves(ctx.histories)
        run.figure(figure, "learning_curves.png")
        plots.close(figure)
        if cfg.tracking.log_model:
            example = source.sample(2, "test").cpu().numpy()
            for name, model in outcome.deploy.items():
                uri = run.model(model.cpu().eval(), name, example)
                run.tags({f"{name}_model_uri": uri})
        run.finish()
    except BaseException as err:
        faults.report_error(err)  # under DDP: what rank 0's run says when another rank failed
        failure = faults.explain(err)
        run.fail(failure)
        if failure is not err:
            raise failure from None
        raise
    if not cfg.trainer.keep_checkpoints:
        checkpoints.remove()  # only for resuming, and a FINISHED run is never resumed
    rows = outcome.rows + [("device", describe_device(device, cfg.trainer.precision, cfg.trainer.compile)), ("wall time", f"{wall:.1f} s")]
    if distributed.current().active:
        rows.append(("processes", str(distributed.current().size)))
    summary(f"kdexp · {cfg.loss.name} · {cfg.data.name}", rows,
            [f"MLflow run {run.run_id} in experiment '{cfg.tracking.experiment}' of {run.where()}",
             f"open the UI: {run.ui_hint()}"])
    return float(outcome.metrics[outcome.objective])
