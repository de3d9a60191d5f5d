"""kdexp: Hydra-configured knowledge-distillation experiments tracked in MLflow."""

__version__ = "0.1.0"
