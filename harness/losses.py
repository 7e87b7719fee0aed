"""Discrepancies between teacher and student outputs, and the generator objectives built on them.

Each is a small registered function so suites name them (`loss: mae`) and golden tests pin them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import Registry

DISCREPANCIES: Registry = Registry("discrepancy")
GENERATOR_OBJECTIVES: Registry = Registry("generator objective")


@DISCREPANCIES.register("mae", "l1")
def mae(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """DFAD's choice: mean absolute error of the logits; its gradient does not vanish as S -> T."""
    return F.l1_loss(s_logits, t_logits)


@DISCREPANCIES.register("mse", "l2")
def mse(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(s_logits, t_logits)


@DISCREPANCIES.register("kld", "kl")
def kld(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax T || softmax S), averaged over samples (and pixels, for dense outputs)."""
    dim = 1
    log_s = F.log_softmax(s_logits.float(), dim)
    log_t = F.log_softmax(t_logits.float(), dim)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim)
    return kl.mean()


@GENERATOR_OBJECTIVES.register("neg")
def neg(d: torch.Tensor) -> torch.Tensor:
    """Classification: the generator maximises the discrepancy, loss_G = -D."""
    return -d


@GENERATOR_OBJECTIVES.register("ada", "log")
def ada(d: torch.Tensor) -> torch.Tensor:
    """L_GEN-ADA (segmentation): loss_G = -log(D + 1), softer when D is large."""
    return -torch.log1p(d)


def kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)) over dim 1; mean over samples (and pixels)."""
    t = temperature
    log_s = F.log_softmax(s_logits.float() / t, 1)
    log_p = F.log_softmax(t_logits.float() / t, 1)
    return (log_p.exp() * (log_p - log_s)).sum(1).mean() * t * t
