"""`hint=ft`: factor transfer (Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression
via Factor Transfer", NeurIPS 2018).

A paraphraser P (a convolutional auto-encoder, no batch norm, LeakyReLU 0.1) is first trained to
reconstruct the teacher's feature t: its own stage, `ft_paraphraser`, minimising mean((P_dec(P_enc(t)) − t)²).
Then a translator T (three 3x3 convs with batch norm) maps the student's feature s to the factor
space, and the student matches the teacher's factor in L1 on normalised factor maps:

    F(x) = normalize(mean_c x², flattened),   hint = mean|F(T(s)) − F(P_enc(t))|
    loss = family loss + weight · hint

(maps of different sizes: the larger average-pooled to the smaller). The paraphraser depends on the
frozen teacher alone: it is frozen after its stage, and a sweep that repeats it (same teacher, same
settings and seed) loads it from the model store.

Recipe of the published numbers (RepDistiller `--distill factor -a 0 -b 200`): the last stage's
output on both sides (`feat[-2]`), factor rate k = 0.5 (channels of the factor = k · the teacher's),
paraphraser trained 30 epochs (`--init_epochs`) with MSE, weight 200, CE weight 1 (kd=hinton
loss.alpha=1). RepDistiller trains the paraphraser at lr 0.01 with a constant rate; here the stage
uses the run's optimiser settings (optim.*).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import nn

from kdexp.config.checks import require
from kdexp.config.registry import HINT_METHODS
from kdexp.distill.methods.base import MethodStage
from kdexp.distill.methods import warmup
from kdexp.distill.methods.hint_layers import LayerPairMethod
from kdexp.distill.methods.maps import require_pair_maps


@dataclass
class FTConfig:
    name: str = "ft"
    weight: float = 200.0
    # Channels of the factor = rate × the teacher feature's channels.
    rate: float = 0.5
    # Epochs of the paraphraser's own stage, before distillation.
    # null: RepDistiller's 30 of 240 epochs scaled to trainer.epochs (methods/warmup.py)
    init_epochs: Any = None
    # Module paths; null = the last stage.
    student: Any = None
    teacher: Any = None


def _convs(channels: list[int], transposed: bool = False, batch_norm: bool = False) -> nn.Sequential:
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for cin, cout in zip(channels, channels[1:]):
        layers += [conv(cin, cout, 3, 1, 1)] + ([nn.BatchNorm2d(cout)] if batch_norm else []) + [nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.encoder = _convs([channels, channels, factor, factor])
        self.decoder = _convs([factor, factor, channels, channels], transposed=True)


def factor(f):
    return F.normalize(f.pow(2).mean(1).flatten(1))


def factor_loss(f_s, f_t):
    """mean |F(f_s) − F(f_t)|, the larger map average-pooled to the smaller."""
    size = min(f_s.shape[2:], f_t.shape[2:])
    f_s = f_s if f_s.shape[2:] == size else F.adaptive_avg_pool2d(f_s, size)
    f_t = f_t if f_t.shape[2:] == size else F.adaptive_avg_pool2d(f_t, size)
    return (factor(f_s) - factor(f_t)).abs().mean()


@HINT_METHODS.register
class FactorTransfer(LayerPairMethod):
    name = "ft"
    schema = FTConfig

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        require(0 < cfg.hint.rate <= 1, "hint.rate", cfg.hint.rate, "allowed: 0 < rate <= 1")
        warmup.resolve_stage(cfg.hint, "hint.init_epochs", cfg.trainer.epochs, recipe_stage=30)

    def setup(self, student, teacher) -> None:
        require_pair_maps(self, student, teacher)
        f_s, f_t = self.pair(student, teacher)
        k = max(1, int(f_t.shape[1] * self.cfg.rate))
        self.paraphraser = Paraphraser(f_t.shape[1], k)  # first: its init depends on the teacher alone
        self.translator = _convs([f_s.shape[1], f_s.shape[1], k, k], batch_norm=True)

    def paraphrase_loss(self, batch, clock, student, teacher):
        f_t = teacher.features[self.teacher_layer].detach()
        rec = F.mse_loss(self.paraphraser.decoder(self.paraphraser.encoder(f_t)), f_t)
        return {"loss": rec, "reconstruction": rec}

    def stages(self, student):
        identity = {"teacher": list(self.teacher_names), "rate": float(self.cfg.rate)}
        return [MethodStage("ft_paraphraser", int(self.cfg.init_epochs), {"paraphraser": self.paraphraser},
                            self.paraphrase_loss, teacher_only=True, identity=identity)]

    def forward(self, batch, clock, student, teacher):
        f_s, f_t = self.pair(student, teacher)
        return {"hint": factor_loss(self.translator(f_s), self.paraphraser.encoder(f_t))}
