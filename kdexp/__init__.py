"""kdexp: Hydra-configured knowledge-distillation experiments tracked in MLflow."""

__version__ = "0.1.0"

# Importing the families and the distillation terms fills the registries (kdexp/registry.py) that
# the schema check and the run iterate: a new family or term is found as soon as its module is.
from kdexp import methods, terms  # noqa: E402,F401
