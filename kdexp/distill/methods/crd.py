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
phase checkpoints and resumes them. Negatives are drawn from a generator of their own, seeded per
step from the epoch, the step and a seed the method draws at setup (a buffer): the same seed gives
the same negatives, resumed or not, on any number of processes, whatever else (dropout) draws.
Scores are computed in float32 (exp(1/τ) overflows float16).

Under DDP (docs/distributed.md) each process holds its rows of the global batch (`Shard`: rows
r, r + N, ...). The labels and indices of the whole global batch are gathered, the negatives drawn
for all of it (the draw one process makes) and each process keeps its rows; Z is the mean over all
processes' scores; the banks are updated with every process's embeddings, gathered in the global
batch's order. So every process holds the same banks, those of one process on the same global
batches (up to float summation order), and each one's loss is its rows' share of the one-process loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from kdexp.config.checks import ConfigError, require
from kdexp.config.registry import HINT_METHODS
from kdexp.data.source import Shard
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


def other_class_samples(labels: torch.Tensor, y: torch.Tensor, k: int, fewest: int | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, k) training indices, for each label in `y` drawn uniformly from the samples of the other
    classes: without replacement when every row has k of them (RepDistiller's `np.random.choice`).
    `fewest`: the fewest other-class samples any row can have (`fewest_others(labels)`); counted
    from this batch when not given, which makes the host wait for the device."""
    allowed = (labels.unsqueeze(0) != y.unsqueeze(1)).float()
    fewest = int(allowed.sum(1).min()) if fewest is None else fewest
    if fewest == 0:
        raise ValueError("hint=crd: a batch's class is the training set's only class; no negatives to draw")
    return torch.multinomial(allowed, k, replacement=k > fewest, generator=generator)


def fewest_others(labels: torch.Tensor) -> int:
    """The fewest samples of the other classes a sample of the training split has: read once, so
    that drawing negatives needs no host-device sync per step."""
    return len(labels) - int(torch.bincount(labels[labels >= 0]).max())


def shard() -> Shard:
    """This process's rows of every global batch: `Shard(rank, processes)` of the job's process
    group (torchrun, SLURM: kdexp/run/distributed.py joins it), `Shard()` without one."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def global_rows(rows: torch.Tensor, part: Shard) -> torch.Tensor:
    """Every process's `rows` (its `part.take` of a global batch) put back into the global batch's
    order: the inverse of `Shard.take` over all processes (the last batch may split unevenly)."""
    if part.world == 1:
        return rows
    counts = [torch.zeros((), dtype=torch.long, device=rows.device) for _ in range(part.world)]
    dist.all_gather(counts, torch.tensor(len(rows), device=rows.device))
    counts = [int(c) for c in counts]
    padded = rows.new_zeros((max(counts), *rows.shape[1:]))
    padded[:len(rows)] = rows
    gathered = [torch.empty_like(padded) for _ in range(part.world)]
    dist.all_gather(gathered, padded)
    out = rows.new_empty((sum(counts), *rows.shape[1:]))
    for rank, (got, count) in enumerate(zip(gathered, counts)):
        out[rank::part.world] = got[:count]
    return out


@HINT_METHODS.register
class CRD(LayerPairMethod):
    name = "crd"
    schema = CRDConfig
    temperatures = ("temperature",)
    # 2: negatives from a generator of their own seeded per step (1: the global generator), drawn
    # for the global batch under DDP.
    revision = 2

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
        # The seed of the negatives' draws (with the epoch and step), drawn last: the heads' and
        # banks' initialisation stay what they were.
        self.register_buffer("draw_seed", torch.randint(0, 2**31, ()))
        self._seed: int | None = None
        self._generator: torch.Generator | None = None
        self._labels: torch.Tensor | None = None

    def embed(self, student, teacher) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_s, v_t): the L2-normalised embeddings of the pair's features, in float32."""
        f_s, f_t = self.pair(student, teacher)
        return (F.normalize(self.embed_s(f_s.flatten(1).float())),
                F.normalize(self.embed_t(f_t.flatten(1).float())))

    def step_generator(self, clock, device: torch.device) -> torch.Generator:
        """The negatives' generator, seeded from the setup's seed, the epoch and the step."""
        if self._seed is None:  # read once (a resumed run loads the same value)
            self._seed = int(self.draw_seed)
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        return self._generator.manual_seed((self._seed * 1_000_003 ** 2 + clock.epoch * 1_000_003 + clock.step) % 2**63)

    def contrast_indices(self, idx: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
                         part: Shard = Shard()) -> torch.Tensor:
        """(B, 1 + K): each sample's own index, then K negatives from the other classes; `y` holds
        the labels of the whole global batch, of which `idx` is this process's `part`."""
        if self._labels is None:
            self._labels = self.train_set.labels().to(idx.device).clone()
            if part.world > 1:  # each process read its shard's labels (-1 elsewhere): take every one's
                dist.all_reduce(self._labels, op=dist.ReduceOp.MAX)
            self._fewest, self._negatives = fewest_others(self._labels), int(self.cfg.negatives)
        negatives = other_class_samples(self._labels, y.to(idx.device), self._negatives, self._fewest, generator)
        return torch.cat([idx.unsqueeze(1), part.take(negatives)], dim=1)

    def scores(self, anchor: torch.Tensor, memory: torch.Tensor, contrast: torch.Tensor, side: int,
               part: Shard = Shard()) -> torch.Tensor:
        """exp(<anchor, memory[contrast]> / τ) / Z, Z set from the first global batch (the mean over
        every process's scores)."""
        rows = memory.index_select(0, contrast.flatten()).view(*contrast.shape, -1)
        out = torch.exp(torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2) / self.cfg.temperature)
        # Z is set from the first batch, on the device (an `if` on it would make the host wait each step).
        z = self.normalisers[side]
        mean = out.detach().mean()
        if part.world > 1:
            total = torch.stack([out.detach().sum(), torch.tensor(float(out.numel()), device=out.device)])
            dist.all_reduce(total)
            mean = total[0] / total[1]
        self.normalisers[side] = torch.where(z < 0, mean * memory.shape[0], z)
        return out / self.normalisers[side].clone()  # a copy: setting the other side's Z writes the buffer

    @torch.no_grad()
    def update(self, memory: torch.Tensor, idx: torch.Tensor, v: torch.Tensor) -> None:
        m = self.cfg.momentum
        memory.index_copy_(0, idx, F.normalize(memory.index_select(0, idx) * m + v.detach() * (1 - m)))

    def forward(self, batch, clock, student, teacher):
        _, y, idx = batch
        part = shard()
        with torch.autocast(idx.device.type, enabled=False):
            v_s, v_t = self.embed(student, teacher)
            # The whole global batch's labels and indices (one process: its own).
            y_all, idx_all = global_rows(torch.stack([y.to(idx.device), idx], 1), part).unbind(1)
            contrast = self.contrast_indices(idx, y_all, self.step_generator(clock, idx.device), part)
            h_s = self.scores(v_s, self.memory_t, contrast, 0, part)
            h_t = self.scores(v_t, self.memory_s, contrast, 1, part)
            hint = nce_loss(h_s, self.train_set.size) + nce_loss(h_t, self.train_set.size)
            # The banks move toward every process's embeddings: the same banks on every process.
            v_all = global_rows(torch.cat([v_s, v_t], 1).detach(), part)
            self.update(self.memory_s, idx_all, v_all[:, :v_s.shape[1]])
            self.update(self.memory_t, idx_all, v_all[:, v_s.shape[1]:])
        return {"hint": hint}
