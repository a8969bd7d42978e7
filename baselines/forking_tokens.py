"""Forking Tokens / "Beyond the 80/20 rule" (Wang et al. 2025): policy gradient only on high-entropy tokens."""

from __future__ import annotations

from typing import Optional

import torch

from baselines.common import agg_loss, cfg, policy_loss
from baselines.methods import FORKING_TOKENS_LOSS
from baselines.ppo import terms_from_config

SCOPES = ("micro_batch", "batch")  # micro_batch: the authors' behaviour (one micro-batch on one GPU)


def forking_count(n_tokens: int, top_ratio: float) -> int:
    """How many tokens keep the gradient: the authors' ceil, int(n * r + 0.9999), at least 1.

    Unlike math.ceil it is immune to float error such as 15 * 0.2 = 3.0000000000000004 (-> 3, not 4).
    """
    return max(1, int(n_tokens * top_ratio + 0.9999))


def forking_mask(entropy: torch.Tensor, response_mask: torch.Tensor, top_ratio: float = 0.2) -> torch.Tensor:
    """Long mask of the exact top-`forking_count` response tokens by entropy (ties never add tokens)."""
    if not 0.0 <= top_ratio <= 1.0:
        raise ValueError(f"top_ratio: must be in [0, 1], got {top_ratio}")
    flat_valid = response_mask.reshape(-1).bool()
    out = torch.zeros(entropy.numel(), dtype=torch.long, device=entropy.device)
    positions = flat_valid.nonzero(as_tuple=True)[0]
    if positions.numel() == 0:
        return out.view_as(entropy)
    scores = entropy.detach().reshape(-1)[positions]
    top = torch.topk(scores, forking_count(positions.numel(), top_ratio)).indices
    out[positions[top]] = 1
    return out.view_as(entropy)


@policy_loss(FORKING_TOKENS_LOSS)
def forking_tokens_policy_loss(
    old_log_prob,
    log_prob,
    advantages,
    response_mask,
    loss_agg_mode="token-mean",
    config=None,
    *,
    entropy: Optional[torch.Tensor] = None,
    entropy_top_mask: Optional[torch.Tensor] = None,
):
    """Dual-clip PPO aggregated over response_mask * top-entropy mask; clip metrics over all response tokens.

    Give the current policy's per-token `entropy` (the mask is then built here with
    `policy_loss.forking_top_ratio`, default 0.2), or a precomputed `entropy_top_mask` (batch scope).
    """
    if entropy_top_mask is None:
        if entropy is None:
            raise ValueError("forking_tokens: needs the per-token entropy of the current policy (entropy=...) or entropy_top_mask")
        entropy_top_mask = forking_mask(entropy, response_mask, float(cfg(config, "policy_loss.forking_top_ratio", 0.2)))
    t = terms_from_config(old_log_prob, log_prob, advantages, response_mask, config)
    return agg_loss(t.losses, response_mask * entropy_top_mask, loss_agg_mode), t.clipfrac, t.ppo_kl, t.clipfrac_lower
