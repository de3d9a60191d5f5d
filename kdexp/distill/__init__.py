"""Distillation: the loss families (`loss=`, `families/`), the methods a paper names (`kd=` and
`hint=`, `methods/`), feature capture by module name, and the shared maths (`functional`).
Importing a submodule registers nothing; `catalog` imports every family and method."""
