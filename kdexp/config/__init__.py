"""The config layer, the bottom of kdexp: the section schemas and their validation, the registries
that families and methods fill, run identity and model-store keys, and where the YAML lives.
It imports nothing of kdexp above it, and no torch."""
