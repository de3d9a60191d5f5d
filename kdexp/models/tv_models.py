"""Any torchvision classification model by name, as a `StagedNet` fitted to the data set.

`name: torchvision`, `arch: resnet18` builds `torchvision.models.get_model("resnet18")` with the
data set's number of classes, swaps its first convolution for one that takes the data set's
channels, and re-wires its own modules (no copies: the parameters are the model's) as
stem + stages + head, so that it can be a teacher, a student, a peer or a multi-exit backbone.

Stages per family: ResNet / ResNeXt / Wide ResNet `layer1..4`; RegNet the trunk's blocks;
ShuffleNetV2 `stage2..4`; GoogLeNet and Inception v3 the inception groups between poolings;
ViT four equal groups of encoder blocks; MaxViT its blocks; the families with a `features`
sequence (VGG, AlexNet, MobileNet v2/v3, EfficientNet v1/v2, ConvNeXt, DenseNet, SqueezeNet,
MNASNet, Swin) are cut before every child that lowers the resolution, found by one dry run on
the data's input shape. That dry run also refuses, in one line, an input too small for the net
(AlexNet and Inception v3 need far more than 32x32 pixels; ViT needs sides divisible by its patch).

`pretrained: true` loads torchvision's ImageNet weights (downloaded once into the torch hub cache,
needs internet) and replaces the last layer; the first convolution is then averaged over its input
channels when the data set is not RGB. The inputs keep kdexp's own per-data-set normalisation.
"""

from __future__ import annotations

import torch
from torch import nn

from kdexp.config.checks import ConfigError
from kdexp.models.staged import StagedNet


class _SpatialMean(nn.Module):
    """`x.mean([2, 3])`: the global pooling ShuffleNetV2 and MNASNet write inline."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean([2, 3])


class _ClassToken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class _ViTStem(nn.Module):
    """Patchify, prepend the class token, add position embeddings: ViT's forward up to its encoder
    blocks, holding the model's own modules and parameters."""

    def __init__(self, vit):
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout
        self.image_size, self.patch_size = vit.image_size, vit.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        torch._assert(h == self.image_size and w == self.image_size,
                      f"ViT expects {self.image_size}x{self.image_size} images, got {h}x{w}")
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (n, patches, hidden)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


def _seq(*modules: nn.Module | None) -> nn.Sequential:
    return nn.Sequential(*[m for m in modules if m is not None])


def _chunks(items: list[nn.Module], parts: int) -> list[nn.Module]:
    """`items` in `parts` consecutive groups of nearly equal size."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(nn.Sequential(*items[start:end]))
        start = end
    return out


def _split_by_resolution(seq: nn.Sequential, x: torch.Tensor, channels_last: bool = False) -> list[nn.Module]:
    """Cut `seq` into stages before every child (but the first) whose output has a lower spatial
    resolution than its input; a trailing stage without parameters (a last pooling) joins the one
    before it. `x` is a dry-run input for `seq`."""
    def pixels(t: torch.Tensor) -> int:
        h, w = t.shape[1:3] if channels_last else t.shape[2:4]
        return int(h) * int(w)

    stages: list[list[nn.Module]] = [[]]
    for child in seq:
        y = child(x)
        if stages[-1] and pixels(y) < pixels(x):
            stages.append([])
        stages[-1].append(child)
        x = y
    if len(stages) > 1 and not any(p.numel() for m in stages[-1] for p in m.parameters()):
        stages[-2].extend(stages.pop())
    return [nn.Sequential(*s) for s in stages]


def _staged(model: nn.Module, x: torch.Tensor) -> StagedNet:
    """Re-wire a torchvision classifier as stem + stages + head (see the module docstring)."""
    import torchvision.models as tvm
    from torchvision.ops.misc import Permute

    m = model
    if isinstance(m, tvm.ResNet):
        return StagedNet([m.layer1, m.layer2, m.layer3, m.layer4],
                         _seq(m.avgpool, nn.Flatten(1), m.fc), stem=_seq(m.conv1, m.bn1, m.relu, m.maxpool))
    if isinstance(m, tvm.RegNet):
        return StagedNet(list(m.trunk_output), _seq(m.avgpool, nn.Flatten(1), m.fc), stem=m.stem)
    if isinstance(m, tvm.ShuffleNetV2):
        return StagedNet([m.stage2, m.stage3, _seq(m.stage4, m.conv5)], _seq(_SpatialMean(), m.fc),
                         stem=_seq(m.conv1, m.maxpool))
    if isinstance(m, tvm.GoogLeNet):
        return StagedNet([_seq(m.inception3a, m.inception3b),
                          _seq(m.maxpool3, m.inception4a, m.inception4b, m.inception4c, m.inception4d, m.inception4e),
                          _seq(m.maxpool4, m.inception5a, m.inception5b)],
                         _seq(m.avgpool, nn.Flatten(1), m.dropout, m.fc),
                         stem=_seq(m.conv1, m.maxpool1, m.conv2, m.conv3, m.maxpool2))
    if isinstance(m, tvm.Inception3):
        return StagedNet([_seq(m.Mixed_5b, m.Mixed_5c, m.Mixed_5d),
                          _seq(m.Mixed_6a, m.Mixed_6b, m.Mixed_6c, m.Mixed_6d, m.Mixed_6e),
                          _seq(m.Mixed_7a, m.Mixed_7b, m.Mixed_7c)],
                         _seq(m.avgpool, m.dropout, nn.Flatten(1), m.fc),
                         stem=_seq(m.Conv2d_1a_3x3, m.Conv2d_2a_3x3, m.Conv2d_2b_3x3, m.maxpool1,
                                   m.Conv2d_3b_1x1, m.Conv2d_4a_3x3, m.maxpool2))
    if isinstance(m, tvm.VisionTransformer):
        return StagedNet(_chunks(list(m.encoder.layers), 4), _seq(m.encoder.ln, _ClassToken(), m.heads),
                         stem=_ViTStem(m))
    if isinstance(m, tvm.MaxVit):
        return StagedNet(list(m.blocks), m.classifier, stem=m.stem)
    # The `features` families: the head is what their forward does after `features`.
    heads = {
        tvm.VGG: lambda: _seq(m.avgpool, nn.Flatten(1), m.classifier),
        tvm.AlexNet: lambda: _seq(m.avgpool, nn.Flatten(1), m.classifier),
        tvm.MobileNetV3: lambda: _seq(m.avgpool, nn.Flatten(1), m.classifier),
        tvm.EfficientNet: lambda: _seq(m.avgpool, nn.Flatten(1), m.classifier),
        tvm.MobileNetV2: lambda: _seq(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), m.classifier),
        tvm.DenseNet: lambda: _seq(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), m.classifier),
        tvm.ConvNeXt: lambda: _seq(m.avgpool, m.classifier),
        tvm.SqueezeNet: lambda: _seq(m.classifier, nn.Flatten(1)),
        tvm.MNASNet: lambda: _seq(_SpatialMean(), m.classifier),
        tvm.SwinTransformer: lambda: _seq(Permute([0, 2, 3, 1]), m.norm, m.permute, m.avgpool, m.flatten, m.head),
    }
    for cls, head in heads.items():
        if isinstance(m, cls):
            if isinstance(m, tvm.SwinTransformer):
                # Swin works channels-last; its stages are wrapped so that every stage output is
                # (N, C, H, W) like every other net's (what exit heads and feature methods expect).
                stages = [_seq(Permute([0, 2, 3, 1]) if i else None, *stage, Permute([0, 3, 1, 2]))
                          for i, stage in enumerate(_split_by_resolution(m.features, x, channels_last=True))]
                return StagedNet(stages, head())
            body = m.layers if isinstance(m, tvm.MNASNet) else m.features
            return StagedNet(_split_by_resolution(body, x), head())
    raise ConfigError(f"torchvision model {type(m).__name__} has no known stage layout in kdexp.models.tv_models")


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    parent = model
    for part in path:
        parent = getattr(parent, part)
    return parent, leaf


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    return next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _adapt_channels(model: nn.Module, channels: int, pretrained: bool) -> None:
    """Give the first convolution `channels` inputs (kept as is when it already has them)."""
    name, conv = _first_conv(model)
    if conv.in_channels == channels:
        return
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    if pretrained:  # grey images: the sum over RGB filters responds as to a grey RGB image
        with torch.no_grad():
            mean = conv.weight.mean(dim=1, keepdim=True)
            new.weight.copy_(mean.repeat(1, channels, 1, 1) * conv.in_channels / channels)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    parent, leaf = _parent(model, name)
    setattr(parent, leaf, new)


def _adapt_classes(model: nn.Module, num_classes: int, pretrained_classes: int) -> None:
    """Replace the last layer that outputs the ImageNet classes (a Linear, or SqueezeNet's 1x1 conv)."""
    last = None
    for name, m in model.named_modules():
        if (isinstance(m, nn.Linear) and m.out_features == pretrained_classes) or (
                isinstance(m, nn.Conv2d) and m.out_channels == pretrained_classes):
            last = (name, m)
    if last is None:
        raise ConfigError(f"found no {pretrained_classes}-way output layer to replace")
    name, m = last
    new = (nn.Linear(m.in_features, num_classes, bias=m.bias is not None) if isinstance(m, nn.Linear)
           else nn.Conv2d(m.in_channels, num_classes, m.kernel_size, m.stride, m.padding))
    parent, leaf = _parent(model, name)
    setattr(parent, leaf, new)


def _arch_kwargs(arch: str, input_shape: tuple[int, ...], pretrained: bool) -> dict:
    kwargs: dict = {}
    if arch in ("googlenet", "inception_v3"):
        # No auxiliary classifiers (they would change what forward returns in training) and no
        # ImageNet re-normalisation of the inputs: kdexp normalises per data set.
        kwargs.update(aux_logits=False, transform_input=False)
        if not pretrained:
            kwargs["init_weights"] = True
    if not pretrained and arch.startswith("vit_"):
        kwargs["image_size"] = input_shape[1]
    if not pretrained and arch.startswith("maxvit"):
        kwargs["input_size"] = tuple(input_shape[1:])
    return kwargs


def build(cfg, input_shape: tuple[int, ...], num_classes: int) -> StagedNet:
    import torchvision.models as tvm

    arch, pretrained = cfg.arch, bool(cfg.pretrained)
    kwargs = _arch_kwargs(arch, input_shape, pretrained)
    try:
        if pretrained:
            model = tvm.get_model(arch, weights="DEFAULT", **kwargs)
        else:
            model = tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except (OSError, RuntimeError) as err:
        how = ("needs internet once to fetch ImageNet weights into the torch hub cache"
               if pretrained else "see torchvision.models")
        raise ConfigError(f"model arch={arch}: cannot build ({' '.join(str(err).split())[:200]}); {how}") from None
    except ValueError as err:  # e.g. MaxViT's partition size against a small input
        raise ConfigError(f"model arch={arch}: cannot take {tuple(input_shape)} inputs "
                          f"({' '.join(str(err).split())[:200]})") from None
    if pretrained:
        _adapt_classes(model, num_classes, 1000)
    _adapt_channels(model, input_shape[0], pretrained)
    model.eval()
    x = torch.zeros(2, *input_shape)
    try:
        with torch.no_grad():
            net = _staged(model, x)
            net.eval()
            out = net(x)
    except (RuntimeError, ValueError, AssertionError) as err:
        raise ConfigError(f"model arch={arch}: cannot take {tuple(input_shape)} inputs "
                          f"({' '.join(str(err).split())[:200]}); pick a net made for small images "
                          f"(the CIFAR ResNets, conf/model/resnet*.yaml) or larger inputs") from None
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(f"model arch={arch}: re-wired net gives {tuple(out.shape)} outputs, expected (2, {num_classes})")
    # torchvision's name of each of our tensors (the re-wired net holds torchvision's own modules),
    # so that a checkpoint saved from torchvision's model loads as a teacher (`from_torchvision_layout`).
    ours = {id(t): name for name, t in net.state_dict(keep_vars=True).items()}
    net.torchvision_names = {name: ours[id(t)] for name, t in model.state_dict(keep_vars=True).items() if id(t) in ours}
    return net.train()


def from_torchvision_layout(state: dict, model: nn.Module) -> dict | None:
    """`state` saved from torchvision's own model (`conv1.weight`, `layer1.0...`, `fc.weight`, as
    torchvision's published ImageNet weights are) renamed to the re-wired net's names (`stem.0.weight`,
    `stages.0.0...`); None when it is not in torchvision's layout."""
    names = getattr(model, "torchvision_names", None)
    if not names or not set(state) <= set(names):
        return None
    return {names[k]: v for k, v in state.items()}


def describe(cfg) -> str:
    return f"{cfg.arch}{'(pretrained)' if cfg.pretrained else ''}"
