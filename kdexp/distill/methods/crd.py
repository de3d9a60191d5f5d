"""`hint=crd`: contrastive representation distillation (Tian, Krishnan & Isola, "Contrastive
Representation Distillation", ICLR 2020).

Both penultimate features (the input of each model's classifier, RepDistiller's `feat[-1]`) are
embedded by a trainable linear head and L2-normalised: v_s = g_s(f_s), v_t = g_t(f_t) ∈ R^128. A
memory bank per model keeps one embedding per training sample (N × 128, addressed by the batch's
`idx`). For sample i with K negatives j drawn from the other classes, the teacher anchor is scored
against the student's bank and the student anchor against the teacher's:

    h_t(i, j) = exp(<v_t(i), M_s[j]> / τ) / Z_t,   h_s(i, j) = exp(<v_s(i), M_t[j]> / τ) / Z_s

(j = i the positive), Z fixed on the first step to N · mean(exp(...)). The NCE loss (the paper's
Eq. 18) with noise P_n = 1/N, for each side h:

    L(h) = −(1/B) Σ_i [ log(h(i,i) / (h(i,i) + K/N)) + Σ_j log((K/N) / (h(i,j) + K/N)) ]
    hint = L(h_s) + L(h_t),   loss = family loss + weight · hint

after which the banks move toward the batch: M[i] ← normalize(m · M[i] + (1 − m) · v(i)).

Recipe (RepDistiller train_student.py / crd/): feat_dim 128, K = 16384 negatives drawn per sample
from the other classes without replacement (`mode=exact`; with replacement where fewer exist),
τ = 0.07, momentum m = 0.5, banks initialised uniform in ±1/√(128/3), `-r 1 -a 0 -b 0.8`:

    CRD:     kd=hinton loss.alpha=1 hint=crd                      (CE + 0.8 · CRD)
    CRD+KD:  `-r 1 -a 1 -b 0.8` = CE + KD + 0.8 · CRD (KD = T² · KL, T = 4). kdexp's hinton weighs
             alpha · CE + (1 − alpha) · KD, so the same objective is kd=hinton loss.alpha=0.5
             hint=crd hint.weight=0.4 — half the reference's loss; with SGD, optim.lr ×2 and
             optim.weight_decay ×½ make every update the reference's (lr 0.1, weight decay 2.5e-4).

The banks, the normalisers Z and the heads are the method's state (buffers and parameters): the
phase checkpoints and resumes them. Negatives are drawn from the global generator, which the loop
reseeds every epoch from the phase's seed: the same seed gives the same negatives, resumed or not.
Scores are computed in float32 (exp(1/τ) overflows float16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdexp.config.checks import ConfigError, require
from kdexp.config.registry import HINT_METHODS
from kdexp.distill.features import classifier_input
from kdexp.distill.methods.hint_layers import LayerPairMethod

EPS = 1e-7  # RepDistiller's, in the NCE ratios


@dataclass
class CRDConfig:
    name: str = "crd"
    weight: float = 0.8
    # Module paths (`:input` for a module's input); null = the input of each model's classifier.
    student: Any = None
    teacher: Any = None
    feat_dim: int = 128
    negatives: int = 16384
    temperature: float = 0.07
    momentum: float = 0.5


def nce_loss(scores: torch.Tensor, size: int) -> torch.Tensor:
    """The NCE loss of (B, 1 + K) scores, the positive first, against noise 1/`size` (Eq. 18)."""
    k = scores.shape[1] - 1
    noise = k / size
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    negative = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


def other_class_samples(labels: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) training indices, for each label in `y` drawn uniformly from the samples of the other
    classes: without replacement when every row has k of them (RepDistiller's `np.random.choice`)."""
    allowed = (labels.unsqueeze(0) != y.unsqueeze(1)).float()
    fewest = int(allowed.sum(1).min())
    if fewest == 0:
        raise ValueError("hint=crd: a batch's class is the training set's only class; no negatives to draw")
    return torch.multinomial(allowed, k, replacement=k > fewest)


@HINT_METHODS.register
class CRD(LayerPairMethod):
    name = "crd"
    schema = CRDConfig
    temperatures = ("temperature",)

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        own = cfg.hint
        for key in ("feat_dim", "negatives"):
            require(isinstance(own[key], int) and own[key] >= 1, f"hint.{key}", own[key], "allowed: an integer >= 1")
        require(0.0 <= own.momentum < 1.0, "hint.momentum", own.momentum, "allowed: 0 <= momentum < 1")

    def resolve(self, student, teacher) -> None:
        self.student_names = self.student_names or [classifier_input(student)]
        self.teacher_names = self.teacher_names or [classifier_input(teacher)]
        super().resolve(student, teacher)

    def setup(self, student, teacher) -> None:
        if self.train_set is None:
            raise ConfigError("hint=crd keeps a memory bank of the training set, and this family gives it none; "
                              "use loss=standard")
        f_s, f_t = self.pair(student, teacher)
        d, n = int(self.cfg.feat_dim), self.train_set.size
        self.embed_s = nn.Linear(f_s[0].numel(), d)
        self.embed_t = nn.Linear(f_t[0].numel(), d)
        bound = 1.0 / math.sqrt(d / 3)
        self.register_buffer("memory_s", torch.rand(n, d) * 2 * bound - bound)
        self.register_buffer("memory_t", torch.rand(n, d) * 2 * bound - bound)
        self.register_buffer("normalisers", torch.full((2,), -1.0))  # Z_s, Z_t; set on the first step
        self._labels: torch.Tensor | None = None

    def embed(self, student, teacher) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_s, v_t): the L2-normalised embeddings of the pair's features, in float32."""
        f_s, f_t = self.pair(student, teacher)
        return (F.normalize(self.embed_s(f_s.flatten(1).float())),
                F.normalize(self.embed_t(f_t.flatten(1).float())))

    def contrast_indices(self, idx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K): each sample's own index, then K negatives from the other classes."""
        if self._labels is None:
            self._labels = self.train_set.labels().to(idx.device)
        negatives = other_class_samples(self._labels, y.to(idx.device), int(self.cfg.negatives))
        return torch.cat([idx.unsqueeze(1), negatives], dim=1)

    def scores(self, anchor: torch.Tensor, memory: torch.Tensor, contrast: torch.Tensor, side: int) -> torch.Tensor:
        """exp(<anchor, memory[contrast]> / τ) / Z, Z set from the first batch."""
        rows = memory.index_select(0, contrast.flatten()).view(*contrast.shape, -1)
        out = torch.exp(torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2) / self.cfg.temperature)
        if self.normalisers[side] < 0:
            self.normalisers[side] = out.detach().mean() * memory.shape[0]
        return out / self.normalisers[side].clone()  # a copy: setting the other side's Z writes the buffer

    @torch.no_grad()
    def update(self, memory: torch.Tensor, idx: torch.Tensor, v: torch.Tensor) -> None:
        m = self.cfg.momentum
        memory.index_copy_(0, idx, F.normalize(memory.index_select(0, idx) * m + v.detach() * (1 - m)))

    def forward(self, batch, clock, student, teacher):
        _, y, idx = batch
        with torch.autocast(idx.device.type, enabled=False):
            v_s, v_t = self.embed(student, teacher)
            contrast = self.contrast_indices(idx, y)
            h_s = self.scores(v_s, self.memory_t, contrast, 0)
            h_t = self.scores(v_t, self.memory_s, contrast, 1)
            hint = nce_loss(h_s, self.train_set.size) + nce_loss(h_t, self.train_set.size)
            self.update(self.memory_s, idx, v_s)
            self.update(self.memory_t, idx, v_t)
        return {"hint": hint}
