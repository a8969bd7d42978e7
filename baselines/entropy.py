"""Entropy bonus: loss = pg_loss - coeff * agg(H), with H the full-vocabulary or a trust-region entropy."""

from __future__ import annotations

import torch

from baselines.common import agg_loss


def entropy_bonus(entropy: torch.Tensor, response_mask: torch.Tensor, coeff: float, loss_agg_mode: str = "token-mean") -> torch.Tensor:
    """The term subtracted from the policy loss: coeff * agg(entropy) over the response tokens (verl's rule)."""
    return agg_loss(entropy, response_mask, loss_agg_mode) * coeff


def policy_loss_with_entropy(pg_loss: torch.Tensor, entropy: torch.Tensor, response_mask: torch.Tensor, coeff: float, loss_agg_mode: str = "token-mean") -> torch.Tensor:
    """pg_loss - coeff * agg(entropy); exactly pg_loss when coeff == 0 (as verl skips the entropy then)."""
    if coeff == 0:
        return pg_loss
    return pg_loss - entropy_bonus(entropy, response_mask, coeff, loss_agg_mode)
