"""Loss families, one file each. Importing this package registers them all by name."""

from kdexp.methods import multi_teacher, none, online, self_distill, standard  # noqa: F401  (registration side effect)
from kdexp.methods.base import REGISTRY, Method, Outcome

__all__ = ["REGISTRY", "Method", "Outcome"]
