"""Intermediate features taken in the same forward pass, by module name, with forward hooks.

`layer_names(model)` lists the names a config may use (`stages.1`, `head.1`, `layer3.0.conv1`: the
dotted paths of `model.named_modules()`), on kdexp's MLP/CNN, the CIFAR ResNets and any torchvision
model alike. `Capture(model, names)` registers one hook per name; after each forward, `features`
holds each named module's output — or, for a name ending in `:input`, the module's input (the
pre-activation feature of a block is the input of its last `relu`: `stages.2.4.relu:input`). Hooks are removed on `close()` (or leaving the `with` block), so
a model that is saved or shipped afterwards carries none.
"""

from __future__ import annotations

import torch
from torch import nn

from kdexp.config.checks import ConfigError


def layer_names(model: nn.Module) -> list[str]:
    """Every named submodule of `model`, in definition order."""
    return [name for name, _ in model.named_modules() if name]


INPUT = ":input"


def stage_names(model: nn.Module) -> list[str]:
    """The outputs of the model's stages (`stages.0`, `stages.1`, ...): what "the k-th stage" of a
    method's recipe means on a `StagedNet`; a model without stages has one, its last module."""
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.ModuleList) and len(stages):
        return [f"stages.{i}" for i in range(len(stages))]
    return [default_layer(model)]


def default_layer(model: nn.Module) -> str:
    """The default feature layer: the output of the last stage (kdexp's models and the CIFAR
    ResNets are `StagedNet`s: the last hidden layer of an MLP, the last conv block of a CNN, the
    last residual stage of a ResNet)."""
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.ModuleList) and len(stages):
        return f"stages.{len(stages) - 1}"
    names = layer_names(model)
    if not names:
        raise ConfigError(f"{type(model).__name__} has no submodules to take features from")
    return names[-1]


def stage_preact_names(model: nn.Module) -> list[str]:
    """Each stage's pre-activation output: the input of its last block's own `relu` module
    (`stages.2.4.relu:input`: the reference's `preact_feats`), or of the stage's own last ReLU when
    only pooling follows it (a VGG stage: `stages.3.relu:input`; a CNN block conv → BN → ReLU →
    max-pool: `stages.1.2:input`), or the stage's output where there is neither (an MLP, or
    MobileNetV2's linear bottlenecks, which are pre-activation already). A net of pre-activation
    blocks (a WRN) names them itself (`StagedNet.preact_bns`: the next batch norm's outputs)."""
    declared = getattr(model, "preact_bns", None)
    if declared:
        return list(declared)
    names = dict(model.named_modules())
    return [_preact(stage, names) for stage in stage_names(model)]


_POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _preact(stage: str, names: dict[str, nn.Module]) -> str:
    children = list(getattr(names.get(stage), "_modules", {}) or [])
    if not children:
        return stage
    own_last = len(children)
    while own_last and isinstance(names[f"{stage}.{children[own_last - 1]}"], _POOLING):
        own_last -= 1
    if own_last and isinstance(names[f"{stage}.{children[own_last - 1]}"], nn.ReLU):
        return f"{stage}.{children[own_last - 1]}{INPUT}"
    relu = f"{stage}.{children[-1]}.relu"
    return relu + INPUT if isinstance(names.get(relu), nn.ReLU) else stage


def classifier_input(model: nn.Module) -> str:
    """The input of the model's last linear layer (`head.2:input` on a CIFAR ResNet): the pooled,
    flattened penultimate feature, RepDistiller's `feat[-1]` (what CRD, RKD, PKT, ... distil)."""
    linears = [name for name, m in model.named_modules() if name and isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no linear classifier whose input to take features from")
    return linears[-1] + INPUT


def find_layer(model: nn.Module, name: str, key: str) -> nn.Module:
    """`model`'s submodule `name`, or a one-line ConfigError naming `key` and the allowed names."""
    modules = dict(model.named_modules())
    name = name.removesuffix(INPUT) if isinstance(name, str) else name
    if not name or name not in modules:
        names = layer_names(model)
        shown = ", ".join(names if len(names) <= 40 else names[:40] + [f"... ({len(names)} in all)"])
        raise ConfigError(f"{key}={name!r} is not a layer of this model; its layers: {shown} "
                          f"(append {INPUT} for a layer's input)")
    return modules[name]


class Capture:
    """Forward hooks on `names` of `model`; `features[name]` is the latest output of each."""

    def __init__(self, model: nn.Module, names: list[str], key: str = "layer"):
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in names:
            module = find_layer(model, name, key)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        if name.endswith(INPUT):
            def keep_input(module: nn.Module, inputs, output) -> None:
                self.features[name] = inputs[0]
            return keep_input

        def keep(module: nn.Module, inputs, output) -> None:
            self.features[name] = output
        return keep

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
