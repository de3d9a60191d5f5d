"""Pure loss terms shared by the loss families. No state, no models: tensors in, tensors out."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def hinton(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
           temperature: float, alpha: float) -> dict[str, torch.Tensor]:
    """`alpha · CE + (1 - alpha) · T² · KL`: alpha weights the hard labels, as in the article."""
    ce = F.cross_entropy(student_logits, labels)
    kd = kd_kl(student_logits, teacher_logits, temperature)
    return {"loss": alpha * ce + (1 - alpha) * kd, "ce": ce, "kd": kd}


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions, as a tensor (no host sync)."""
    return (logits.argmax(dim=1) == labels).sum()
