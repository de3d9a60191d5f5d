"""Pure loss terms shared by the loss families. No state, no models: tensors in, tensors out."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# How several teachers' distributions are combined (loss=multi_teacher), how peers teach each
# other (loss=online): the families' schemas allow these.
AGGREGATES = ("mean", "weighted", "confidence")
ONLINE_MODES = ("dml", "ensemble")


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`T² · KL(softmax(teacher/T) ‖ softmax(student/T))`, batch-mean, as in Hinton et al. and the
    source article. The T² keeps the gradient scale of the soft term independent of T."""
    soft_targets = F.softmax(teacher_logits / temperature, dim=1)
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_student, soft_targets, reduction="batchmean") * temperature**2


def kd_kl_from_probs(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """`kd_kl` against an already softened target distribution (e.g. an average of teachers)."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_student, target_probs, reduction="batchmean") * temperature**2


def labels_only(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Training on the hard labels alone: teachers, baselines, the `none` family."""
    return {"loss": F.cross_entropy(logits, labels)}


def hinton(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
           temperature: float, alpha: float) -> dict[str, torch.Tensor]:
    """`alpha · CE + (1 - alpha) · T² · KL`: alpha weights the hard labels, as in the article."""
    ce = F.cross_entropy(student_logits, labels)
    kd = kd_kl(student_logits, teacher_logits, temperature)
    return {"loss": alpha * ce + (1 - alpha) * kd, "ce": ce, "kd": kd}


# --- several teachers ---------------------------------------------------------------


def teacher_weights(teacher_logits: torch.Tensor, aggregate: str, weights=None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weights `(B, K)` of K teachers, each row summing to 1.

    `teacher_logits` is `(K, B, C)`. mean: 1/K each. weighted: the fixed `weights` (one per
    teacher, >= 0) divided by their sum. confidence: for sample n, teacher k's weight is its
    probability of the true label at T = 1, normalised over teachers:
    `w_nk = p_k(y_n | x_n) / Σ_j p_j(y_n | x_n)` (= softmax over teachers of −CE_k(n))."""
    k, b = teacher_logits.shape[:2]
    if aggregate == "mean":
        return teacher_logits.new_full((b, k), 1.0 / k)
    if aggregate == "weighted":
        w = torch.as_tensor(list(weights), dtype=teacher_logits.dtype, device=teacher_logits.device)
        if w.numel() != k:
            raise ValueError(f"{w.numel()} weights for {k} teachers")
        return (w / w.sum()).expand(b, k)
    if aggregate == "confidence":
        if labels is None:
            raise ValueError("aggregate='confidence' needs the labels")
        log_p = F.log_softmax(teacher_logits, dim=2)  # (K, B, C)
        log_p_true = log_p.gather(2, labels.view(1, b, 1).expand(k, b, 1)).squeeze(2)  # (K, B)
        return F.softmax(log_p_true.t(), dim=1)
    raise ValueError(f"unknown aggregate {aggregate!r}; allowed: {', '.join(AGGREGATES)}")


def aggregate_teachers(teacher_logits: torch.Tensor | list[torch.Tensor], temperature: float,
                       aggregate: str = "mean", weights=None,
                       labels: torch.Tensor | None = None) -> torch.Tensor:
    """The distillation target of several teachers: `Σ_k w_nk · softmax(z_k / T)`, a `(B, C)`
    probability distribution per sample, with the weights of `teacher_weights`. Detached:
    teachers are never trained through it."""
    z = torch.stack(list(teacher_logits)) if isinstance(teacher_logits, (list, tuple)) else teacher_logits
    z = z.detach()
    w = teacher_weights(z, aggregate, weights, labels)  # (B, K)
    probs = F.softmax(z / temperature, dim=2)  # (K, B, C)
    return torch.einsum("bk,kbc->bc", w, probs)


def multi_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor | list[torch.Tensor],
                  labels: torch.Tensor, temperature: float, alpha: float, aggregate: str = "mean",
                  weights=None) -> dict[str, torch.Tensor]:
    """`alpha · CE + (1 - alpha) · T² · KL(aggregate of softened teachers ‖ softmax(student/T))`."""
    target = aggregate_teachers(teacher_logits, temperature, aggregate, weights, labels)
    ce = F.cross_entropy(student_logits, labels)
    kd = kd_kl_from_probs(student_logits, target, temperature)
    return {"loss": alpha * ce + (1 - alpha) * kd, "ce": ce, "kd": kd}


def ensemble_probs(logits: torch.Tensor | list[torch.Tensor], weights=None) -> torch.Tensor:
    """Prediction of an ensemble: the (weighted) mean of the members' softmax probabilities."""
    z = torch.stack(list(logits)) if isinstance(logits, (list, tuple)) else logits
    w = teacher_weights(z, "mean" if weights is None else "weighted", weights)  # (B, K)
    return torch.einsum("bk,kbc->bc", w, F.softmax(z, dim=2))


# --- online distillation (peers trained together) ------------------------------------


def mutual(peer_logits: list[torch.Tensor], labels: torch.Tensor, temperature: float, alpha: float,
           mode: str = "dml") -> dict[str, torch.Tensor]:
    """Online distillation between K >= 2 peers trained together.

    dml (Deep Mutual Learning): peer k minimises
    `alpha · CE(z_k, y) + (1 - alpha) · mean_{j≠k} T² · KL(softmax(z_j/T).detach() ‖ softmax(z_k/T))`.
    ensemble (ONE / KDCL-style): peer k distils from the detached mean of all peers' logits:
    `alpha · CE(z_k, y) + (1 - alpha) · T² · KL(softmax(mean_j z_j / T).detach() ‖ softmax(z_k/T))`.
    Returns `peer{k}_ce`, `peer{k}_kd`, `peer{k}_loss` and `loss` = Σ_k peer{k}_loss (each peer's
    loss reaches only its own parameters, so one optimiser over all peers trains each on its own)."""
    k = len(peer_logits)
    if k < 2:
        raise ValueError(f"online distillation needs at least two peers, got {k}")
    detached = [z.detach() for z in peer_logits]
    if mode == "ensemble":
        mean_logits = torch.stack(detached).mean(dim=0)
    elif mode != "dml":
        raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(ONLINE_MODES)}")
    terms: dict[str, torch.Tensor] = {}
    total = 0
    for i, z in enumerate(peer_logits):
        ce = F.cross_entropy(z, labels)
        if mode == "dml":
            kd = torch.stack([kd_kl(z, detached[j], temperature) for j in range(k) if j != i]).mean()
        else:
            kd = kd_kl(z, mean_logits, temperature)
        loss = alpha * ce + (1 - alpha) * kd
        terms.update({f"peer{i}_ce": ce, f"peer{i}_kd": kd, f"peer{i}_loss": loss})
        total = total + loss
    return {"loss": total, **terms}


# --- self-distillation (multi-exit) --------------------------------------------------


def feature_l2(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`‖h − h_target.detach()‖²` averaged over the batch and the feature dimensions (so that the
    scale of `loss.feature_weight` does not depend on the feature width)."""
    return F.mse_loss(features, target.detach())


def self_distill(exit_logits: list[torch.Tensor], labels: torch.Tensor, temperature: float,
                 alpha: float, exit_features: list[torch.Tensor] | None = None,
                 feature_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Deep-to-shallow self-distillation (Be Your Own Teacher) over the exits of one net.

    `exit_logits` run shallow → deep. The deepest exit trains on `CE(z_deep, y)`; each shallower
    exit i on `alpha · CE(z_i, y) + (1 - alpha) · T² · KL(softmax(z_deep/T).detach() ‖ softmax(z_i/T))
    + feature_weight · ‖h_i − h_deep.detach()‖²` (`exit_features`, same shape per exit, needed only
    when feature_weight > 0). `loss` sums every exit's loss; terms are named `exit{i}_*` (1-based).
    With alpha = 1 and feature_weight = 0 every exit trains on the labels alone (the baseline)."""
    n = len(exit_logits)
    deep = exit_logits[-1]
    deep_target = deep.detach()
    terms: dict[str, torch.Tensor] = {}
    ce = F.cross_entropy(deep, labels)
    terms[f"exit{n}_ce"] = ce
    total = ce
    for i, z in enumerate(exit_logits[:-1], start=1):
        ce = F.cross_entropy(z, labels)
        kd = kd_kl(z, deep_target, temperature)
        loss = alpha * ce + (1 - alpha) * kd
        terms.update({f"exit{i}_ce": ce, f"exit{i}_kd": kd})
        if feature_weight:
            if exit_features is None:
                raise ValueError("feature_weight > 0 needs the exits' features")
            feat = feature_l2(exit_features[i - 1], exit_features[-1])
            terms[f"exit{i}_feat"] = feat
            loss = loss + feature_weight * feat
        total = total + loss
    return {"loss": total, **terms}


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions, as a tensor (no host sync)."""
    return (logits.argmax(dim=1) == labels).sum()
