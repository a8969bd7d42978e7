"""Vanilla PPO: the dual-clip clipped surrogate (clip 0.2, c = 3) that every method builds on."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from baselines.common import agg_loss, cfg, masked_mean, policy_loss


class PPOTerms(NamedTuple):
    """Per-token dual-clip PPO losses and the metrics verl logs for them."""

    losses: torch.Tensor  # (batch, response) per-token loss, before aggregation
    log_ratio: torch.Tensor  # log pi - log pi_old (clamped only when clamp_log_ratio is set)
    clipfrac: torch.Tensor
    clipfrac_lower: torch.Tensor
    ppo_kl: torch.Tensor


def dual_clip_terms(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    clamp_log_ratio: Optional[float] = None,
) -> PPOTerms:
    """Dual-clip PPO per token: max(-A r, -A clip(r)) and, for A < 0, min(that, -c A).

    `clamp_log_ratio=None` is the authors' fork (verl 0.4.0 `core_algos.compute_policy_loss`: no clamp); 20 is
    verl 0.4.1's `compute_policy_loss`, which clamps log r to [-20, 20] before exp and ppo_kl. They differ only
    where |log r| > 20, and there KL-Cov's |log r| penalty most (value, and a zero gradient when clamped).
    """
    if not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c: must be > 1.0 for dual-clip PPO, got {clip_ratio_c}")
    log_ratio = log_prob - old_log_prob
    if clamp_log_ratio is not None:
        log_ratio = torch.clamp(log_ratio, min=-clamp_log_ratio, max=clamp_log_ratio)
    ratio = torch.exp(log_ratio)
    ppo_kl = masked_mean(-log_ratio, response_mask)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clipped = torch.maximum(loss1, loss2)
    clipfrac = masked_mean(torch.gt(loss2, loss1).float(), response_mask)
    loss3 = -advantages * clip_ratio_c
    dual = torch.min(loss3, clipped)
    clipfrac_lower = masked_mean(torch.gt(clipped, loss3) * (advantages < 0).float(), response_mask)
    losses = torch.where(advantages < 0, dual, clipped)
    return PPOTerms(losses, log_ratio, clipfrac, clipfrac_lower, ppo_kl)


def terms_from_config(old_log_prob, log_prob, advantages, response_mask, config) -> PPOTerms:
    """dual_clip_terms with the clip settings read from a verl actor config (verl's defaults when absent)."""
    clip = cfg(config, "clip_ratio", 0.2)
    return dual_clip_terms(
        old_log_prob,
        log_prob,
        advantages,
        response_mask,
        clip_low=cfg(config, "clip_ratio_low", clip),
        clip_high=cfg(config, "clip_ratio_high", clip),
        clip_ratio_c=cfg(config, "clip_ratio_c", 3.0),
        # The paper's methods follow the fork (no clamp); policy_loss.clamp_log_ratio=20 gives verl 0.4.1's.
        clamp_log_ratio=cfg(config, "policy_loss.clamp_log_ratio", None),
    )


@policy_loss("tre_dual_clip")
def dual_clip_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None):
    """The authors' PPO loss: dual-clip surrogate aggregated with `loss_agg_mode` (verl's, without its clamp)."""
    t = terms_from_config(old_log_prob, log_prob, advantages, response_mask, config)
    return agg_loss(t.losses, response_mask, loss_agg_mode), t.clipfrac, t.ppo_kl, t.clipfrac_lower
