"""Renaming a state dict from the module names of the CIFAR-100 KD benchmark code (RepDistiller,
mdistiller: `conv1`, `block1.layer.0`, `layer2.3`, `classifier.0`, ...), in which its published
teachers are saved, to kdexp's `StagedNet` names (`stem`, `stages.k`, `head`).

Each architecture module lists its renames as (old prefix, new prefix) pairs, matched on whole
dotted components (`bn1` renames `bn1.weight`, never `block1.layer.0.bn1.weight`); the first rule
that matches a key wins, so longer prefixes go first. Keys no rule matches are left as they are,
for the importer's key check to name as unexpected.
"""

from __future__ import annotations

from torch import nn


def rename(state: dict, rules: list[tuple[str, str]]) -> dict:
    """`state` with each key's first matching prefix replaced (order of keys kept)."""
    out = {}
    for key, value in state.items():
        for old, new in rules:
            if key == old or key.startswith(old + "."):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def linear_index(head: nn.Module) -> str:
    """The name of the (last) linear layer inside a head, e.g. `"2"` for pool → flatten → linear."""
    return [name for name, m in head.named_children() if isinstance(m, nn.Linear)][-1]


def is_benchmark(state: dict, *markers: str) -> bool:
    """True when `state` has every marker key (names only the benchmark layout has)."""
    return all(marker in state for marker in markers)
