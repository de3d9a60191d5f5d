"""`kd=dkd`: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022).

Hinton's KL splits into a target-class part and a non-target part. With b = (p_y, 1 − p_y) the
binary "target vs the rest" distribution and p̂ the distribution over the non-target classes
(softmax of the other logits), all at temperature T:

    TCKD = KL(b_t ‖ b_s),  NCKD = KL(p̂_t ‖ p̂_s),  KL(p_t ‖ p_s) = TCKD + (1 − p_t,y) · NCKD
    loss = ce_weight · CE(z_s, y) + min(epoch / warmup, 1) · T² · (alpha · TCKD + beta · NCKD)

DKD frees NCKD from the (1 − p_t,y) factor that suppresses it for confident teachers. Defaults as
mdistiller's CIFAR-100 recipe: alpha = 1, beta = 8, T = 4, ce_weight = 1, warmup = 20 of its 240
epochs (null: that fraction of `trainer.epochs`, methods/warmup.py). beta
is per pair in mdistiller's configs/cifar100/dkd/: 8 for ResNet-32x4 → ResNet-8x4 (and the default),
2 for res56 → res20 and res110 → res32, 6 for the VGG and WRN pairs; `+bench=cifar100 pair=...`
sets it (conf/recipe/dkd/<pair>.yaml).
`kd.standardize=true` z-scores the logits first (logit standardisation) and keeps T, alpha, beta.
The DKD+LS recipe of Sun et al. (CVPR 2024; their `--logit-stand --base-temp 2 --kd-weight 9`
multiplies alpha and beta by 9 and sets T = 2) is, for ResNet-32x4 → ResNet-8x4,
`kd.standardize=true kd.temperature=2 kd.alpha=9 kd.beta=72`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdexp.config.registry import KD_METHODS
from kdexp.distill.methods import warmup
from kdexp.distill.methods.base import LogitMethod
from kdexp.distill.methods.ls import standardize


def dkd_parts(z_s: torch.Tensor, z_t: torch.Tensor, labels: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(T² · TCKD, T² · NCKD), each a batch mean."""
    b, c = z_s.shape
    # Gathers, not boolean masks: a mask's rows are counted on the host (a device sync every step);
    # a scatter, not one_hot, which reads the labels' range on the host.
    label = labels.view(b, 1)
    target = torch.zeros_like(z_s, dtype=torch.bool).scatter_(1, label, True)
    rest = torch.arange(c - 1, device=labels.device).unsqueeze(0)
    rest = rest + (rest >= label).long()  # each row's non-target classes, in order
    log_s, log_t = F.log_softmax(z_s / temperature, 1), F.log_softmax(z_t / temperature, 1)
    # log p_y and log(1 − p_y), stably: the log-sum-exp of the non-target log-probabilities.
    def binary(log_p: torch.Tensor) -> torch.Tensor:
        log_target = log_p.gather(1, label)
        log_rest = torch.logsumexp(log_p.masked_fill(target, float("-inf")), dim=1, keepdim=True)
        return torch.cat([log_target, log_rest], dim=1)
    bin_s, bin_t = binary(log_s), binary(log_t)
    tckd = F.kl_div(bin_s, bin_t, reduction="batchmean", log_target=True)
    others_s = (z_s / temperature).gather(1, rest)
    others_t = (z_t / temperature).gather(1, rest)
    nckd = F.kl_div(F.log_softmax(others_s, 1), F.log_softmax(others_t, 1), reduction="batchmean",
                    log_target=True)
    return tckd * temperature**2, nckd * temperature**2


@dataclass
class DKDConfig:
    name: str = "dkd"
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    ce_weight: float = 1.0
    # Epochs over which the distillation weight rises linearly to 1 (0 = full weight at once);
    # null = the recipe's 20 of 240 epochs, scaled to trainer.epochs (resolved when validated).
    warmup: int | None = None
    standardize: bool = False


@KD_METHODS.register
class DKD(LogitMethod):
    name = "dkd"
    schema = DKDConfig
    instead_of = {"temperature": "kd.temperature", "alpha": "kd.ce_weight (kd.alpha is the TCKD weight)"}
    temperatures = ("temperature",)
    weights = ("alpha", "beta", "ce_weight")

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        warmup.resolve(cfg.kd, "kd.warmup", cfg.trainer.epochs, recipe_warmup=20)

    def forward(self, batch, clock, student, teacher):
        cfg, y = self.cfg, batch[1]
        z_s, z_t = student.logits, teacher.logits
        ce = F.cross_entropy(z_s, y)
        if cfg.standardize:
            z_s, z_t = standardize(z_s), standardize(z_t)
        tckd, nckd = dkd_parts(z_s, z_t, y, cfg.temperature)
        kd = warmup.ramp(clock.epoch, cfg.warmup) * (cfg.alpha * tckd + cfg.beta * nckd)
        return {"loss": cfg.ce_weight * ce + kd, "ce": ce, "kd": kd, "tckd": tckd, "nckd": nckd}
