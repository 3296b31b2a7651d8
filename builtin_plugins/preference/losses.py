"""The preference losses on sequence log-probabilities (1-d tensors, one value per pair or example), exactly as
the papers write them. No model here: :mod:`.objectives` computes the log-probabilities and calls these, and the
tests check them against hand-computed values and against TRL's implementations (docs/preference.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class PairLosses:
    """Per-pair losses (carrying the graph) and the detached figures reported beside them."""

    losses: Any
    chosen_rewards: Any
    rejected_rewards: Any


def dpo(
    chosen: Any, rejected: Any, ref_chosen: Any, ref_rejected: Any, *, beta: float, label_smoothing: float = 0.0
) -> PairLosses:
    """DPO's sigmoid loss (Rafailov et al. 2023, eq. 7), with cDPO's label smoothing ``eps`` (Mitchell 2023):

    ``z = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))``,
    ``loss = -(1 - eps) * log sigmoid(z) - eps * log sigmoid(-z)``.

    The log-probabilities are summed over each completion's tokens. The implicit rewards are
    ``beta * (logp - ref_logp)``."""
    import torch.nn.functional as F

    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    z = beta * (chosen_ratio - rejected_ratio)
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return PairLosses(losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach())


def orpo(chosen_mean: Any, rejected_mean: Any, chosen_nll: Any, *, beta: float) -> tuple[PairLosses, Any]:
    """ORPO (Hong et al. 2024, eqs. 6-7): ``loss = nll(chosen) + beta * -log sigmoid(log odds ratio)``, where
    ``log odds(y) = log p(y) - log(1 - p(y))`` with ``log p(y)`` the completion's mean token log-probability, and
    ``nll(chosen)`` the chosen completion's mean token negative log-likelihood. ``beta`` is the paper's lambda
    (TRL calls it ``beta`` too). Returns the losses (rewards ``beta * mean logp``, as TRL reports them) and the
    log odds ratios."""
    import torch
    import torch.nn.functional as F

    def log_one_minus(mean: Any) -> Any:  # log(1 - exp(a)), finite for a completion of probability 1
        return torch.log(-torch.expm1(mean.clamp(max=-1e-6)))

    log_odds = (chosen_mean - rejected_mean) - (log_one_minus(chosen_mean) - log_one_minus(rejected_mean))
    losses = chosen_nll - beta * F.logsigmoid(log_odds)
    return PairLosses(losses, (beta * chosen_mean).detach(), (beta * rejected_mean).detach()), log_odds.detach()


def kto(
    logps: Any,
    ref_logps: Any,
    desirable: Any,
    kl: Any,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Any, Any]:
    """KTO (Ethayarajh et al. 2024, eq. 8, as TRL implements it): with ``r = logp - ref_logp`` (summed over the
    completion) and ``z`` the reference point (the batch's KL estimate, detached, at least 0):

    desirable ``w_d * (1 - sigmoid(beta * (r - z)))``, undesirable ``w_u * (1 - sigmoid(beta * (z - r)))``.

    Returns the per-example losses and the rewards ``beta * r`` (detached)."""
    import torch

    ratio = logps - ref_logps
    z = kl.detach().clamp(min=0)
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - z)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z - ratio)))
    return torch.where(desirable, good, bad), (beta * ratio).detach()
