"""Every loss family and distillation method, imported so that each registers by name
(kdexp/config/registry.py). The entry points import this module before they validate a config (the
CLI's task, a sweep's callback); it is not imported with the package, so that `kdexp --help` and
`kdexp --cfg job`, which validate nothing, never pay for importing torch (about 2 s)."""

from kdexp.distill import families, methods  # noqa: F401  (registration side effect)
