"""Devices: which `trainer.device` values this machine can run, what `auto` resolves to, and how a
run's device is described in its tags and summary."""

from __future__ import annotations

import torch

from kdexp.config.checks import ConfigError


def available_devices() -> list[str]:
    """The `trainer.device` values this machine can run, besides `auto`."""
    here = ["cpu"]
    if torch.cuda.is_available():
        here.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        here.append("mps")
    return here


def resolve_device(name: str, precision: str = "32") -> torch.device:
    """`trainer.device` → a torch device (auto: cuda, else mps, else cpu). A device this machine
    lacks, or bf16 on one that cannot run it, is refused in one line."""
    here = available_devices()
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if d in here)
    elif name not in here:
        raise ConfigError(f"trainer.device={name} is not available on this machine; "
                          f"available here: {', '.join(['auto', *here])}")
    device = torch.device(name)
    if str(precision) == "fp16" and device.type != "cuda":
        raise ConfigError(f"trainer.precision=fp16 needs a CUDA device (float16 autocast with a GradScaler); "
                          f"on {name} use trainer.precision=bf16 or 32")
    if str(precision) == "bf16" and not _bf16_works(device):
        raise ConfigError(f"trainer.precision=bf16 is not supported on this {name} device; use trainer.precision=32")
    return device


def describe_device(device: torch.device, precision: str, compiled: bool = False) -> str:
    """`cuda:0 (NVIDIA H100 80GB HBM3), bf16 autocast, compiled`: where and how a run trained, for
    its tags and summary."""
    name = str(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    how = {"bf16": "bf16 autocast", "fp16": "fp16 autocast + GradScaler"}.get(str(precision), "float32")
    return f"{name}, {how}{', compiled' if compiled else ''}"


def _bf16_works(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # cpu always; mps from macOS 14
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except (RuntimeError, TypeError):
        return False
    return True
