"""`hint=nst`: neuron selectivity transfer (Huang & Wang, "Like What You Like: Knowledge Distill
via Neuron Selectivity Transfer", arXiv 1707.01219, 2017).

Each channel's map over the H·W positions is a sample of how the neuron selects; the student's
channels should be distributed like the teacher's. With f_c the c-th channel flattened and
L2-normalised over positions (maps pooled to the smaller size first), NST is the squared maximum
mean discrepancy between the two sets of channels under the polynomial kernel k(a, b) = (aᵀb)²:

    hint = mean_{c,c'} k(t_c, t_c') + mean_{c,c'} k(s_c, s_c') − 2 mean_{c,c'} k(s_c, t_c'),

averaged over the batch and summed over the layer pairs. The channel counts may differ; the
spatial positions are what is compared.

Recipe of the published numbers (RepDistiller `--distill nst -a 0 -b 50`, mdistiller NST
FEAT_WEIGHT 50; CRD Table 1, resnet32x4 → resnet8x4: 73.30): CE + 50 · hint summed over every stage
after the stem (RepDistiller `feat[1:-1]`, mdistiller `feats[1:]`: the three stages of a CIFAR
ResNet), batch 64. The paper itself places NST on the last stage alone (`hint.student=stages.2
hint.teacher=stages.2` on a CIFAR ResNet). Defaults here: weight 50, layers = every stage of both
models (as many pairs as the shallower has, the first ones: `zip`); `loss.alpha=1` makes the family loss CE
alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from kdexp.config.registry import HINT_METHODS
from kdexp.distill.methods.hint_layers import LayerPairMethod
from kdexp.distill.methods.maps import EVERY_STAGE, common_size, refuse_vector_models, require_pair_maps


def _poly(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, C_a, C_b) the polynomial kernel (aᵀb)² between every pair of channels."""
    return (a @ b.transpose(1, 2)).pow(2)


def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    f_s, f_t = common_size(f_s, f_t.detach())
    s = F.normalize(f_s.flatten(2), dim=2)
    t = F.normalize(f_t.flatten(2), dim=2)
    return _poly(t, t).mean() + _poly(s, s).mean() - 2 * _poly(s, t).mean()


@dataclass
class NSTConfig:
    name: str = "nst"
    weight: float = 50.0
    # Layers by module path (one, or lists paired in order); null = every stage of each model.
    student: Optional[Any] = None
    teacher: Optional[Any] = None


@HINT_METHODS.register
class NeuronSelectivityTransfer(LayerPairMethod):
    name = "nst"
    schema = NSTConfig
    single = False
    default_stages = EVERY_STAGE
    revision = 2  # unequal stage counts paired from the first stage (`zip`, the reference); 1 kept the last

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        refuse_vector_models(cfg, cls.name)

    def setup(self, student, teacher) -> None:
        require_pair_maps(self, student, teacher)

    def forward(self, batch, clock, student, teacher):
        return {"hint": sum(nst_loss(f_s, f_t) for f_s, f_t in self.pairs(student, teacher))}
