"""The Hydra entry point: compose → validate → run → return the objective (for sweepers).

Bad settings end the process with one line on stderr and exit code 2, before any training.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from kdexp.config import ConfigError
from kdexp.paths import CONFIG_DIR


EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> "NoReturn":  # noqa: F821
    print(f"kdexp: error: {message}", file=sys.stderr)
    sys.exit(code)


def group_options(group: str) -> list[str]:
    folder = CONFIG_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def check_group_choices(args: list[str]) -> None:
    """Refuse `group=unknown` in one line (Hydra's own message spans several lines)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except HydraException:
        return  # malformed overrides: Hydra reports them itself
    for override in overrides:
        group = override.key_or_group
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


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _task(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from kdexp import experiment
    from kdexp.config import validate
    from kdexp.train import NonFiniteLoss

    from kdexp.sweep import parent_for_job, threads_per_job

    hydra_cfg = HydraConfig.get()
    try:
        parent = parent_for_job(hydra_cfg, cfg.tracking)
        if parent is not None and cfg.trainer.threads == 0:
            cfg.trainer.threads = threads_per_job(hydra_cfg)
        typed = validate(cfg)
        output_dir = Path(hydra_cfg.runtime.output_dir)
        hydra_dir = output_dir / hydra_cfg.output_subdir if hydra_cfg.output_subdir else None
        return experiment.run(typed, list(hydra_cfg.overrides.task), hydra_dir, parent)
    except ConfigError as err:
        fail(str(err))
    except NonFiniteLoss as err:
        fail(str(err), code=1)


def check_output_dirs(args: list[str]) -> None:
    """Refuse an output folder that cannot be created before Hydra tries (its error is a traceback)."""
    from kdexp.tracking import _unwritable

    folders = {"hydra.run.dir": "outputs", "hydra.sweep.dir": "outputs"}
    for arg in args:
        key, _, value = arg.partition("=")
        if key in folders and value:
            folders[key] = value.split("${")[0] or "."
    for key, folder in folders.items():
        reason = _unwritable(Path(folder).absolute())
        if reason:
            fail(f"{key}: cannot create output folder {Path(folder).absolute()}: {reason}")


def main() -> None:
    args = sys.argv[1:]
    if not os.environ.get("HYDRA_FULL_ERROR"):
        check_group_choices(args)
        check_output_dirs(args)
    try:
        _task()
    except KeyboardInterrupt:
        fail("interrupted; the run is marked KILLED and its checkpoint kept: run the same command to resume", 130)


if __name__ == "__main__":
    main()
