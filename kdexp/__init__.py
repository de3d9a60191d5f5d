"""kdexp: Hydra-configured knowledge-distillation experiments tracked in MLflow."""

import os as _os

from omegaconf import OmegaConf as _OmegaConf

__version__ = "0.1.0"


def launch_token() -> str:
    """`${kdexp.launch:}` in hydra.run.dir and hydra.sweep.dir (conf/config.yaml): what tells two
    launches in one folder in the same second apart (the launching process's id). Cached, and
    Hydra copies the cache into every job's config, so all jobs of a launch see the same value.
    Registered here, on import of the package, so every composition of kdexp's configs has it."""
    return str(_os.getpid())


_OmegaConf.register_new_resolver("kdexp.launch", launch_token, use_cache=True, replace=True)

