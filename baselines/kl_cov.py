"""KL-Cov and Clip-Cov (Cui et al. 2025): act on the few tokens whose log-prob co-varies most with the advantage.

Three losses:
  * `kl_cov_fork`  - as the TRE authors coded it: the dual-clip PPO loss, plus ppo_kl_coef * |log r| on the top
                     k_percent % (default 0.2 %) of valid tokens by centred cov(A, log pi). Clip metrics are
                     computed before the penalty. The default of the `kl_cov` method of the grid.
  * `kl_cov`       - as in the original paper / upstream verl: unclipped surrogate -A r, the penalty on the top
                     `kl_cov_ratio` fraction (default 0.0002); ppo_kl reported as mean |log r|.
  * `clip_cov`     - upstream Clip-Cov: detach the gradient of a random `clip_cov_ratio` fraction of the tokens
                     whose covariance lies in (lb, ub).
"""

from __future__ import annotations

from typing import Optional

import torch

from baselines.common import agg_loss, cfg, masked_mean, policy_loss
from baselines.ppo import terms_from_config


def centred_covariance(advantages: torch.Tensor, log_prob: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(A_t - mean A) * (log pi_t - mean log pi) over the valid tokens, flattened, detached."""
    adv = advantages[valid].detach().reshape(-1)
    logp = log_prob[valid].detach().reshape(-1)
    return (adv - adv.mean()) * (logp - logp.mean())


def top_cov_positions(advantages: torch.Tensor, log_prob: torch.Tensor, response_mask: torch.Tensor, n_select) -> torch.Tensor:
    """(row, col) index tensors of the valid tokens with the largest covariance; n_select(N) gives how many."""
    valid = response_mask > 0
    flat_valid = torch.nonzero(valid.reshape(-1), as_tuple=True)[0]
    if flat_valid.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=advantages.device)
        return empty, empty
    cov = centred_covariance(advantages, log_prob, valid)
    chosen = flat_valid[torch.topk(cov, n_select(cov.numel()), largest=True).indices]
    width = advantages.shape[1]
    return chosen // width, chosen % width


@policy_loss("kl_cov_fork")
def kl_cov_fork_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None):
    """The authors' KL-Cov: |log r| * coef added to the dual-clip loss of the top k_percent % tokens by cov."""
    k_percent = float(cfg(config, "policy_loss.kl_cov_k_percent", 0.2))
    coef = float(cfg(config, "policy_loss.ppo_kl_coef", 1.0))
    t = terms_from_config(old_log_prob, log_prob, advantages, response_mask, config)
    losses = t.losses
    if k_percent > 0:
        # The authors' count: max(1, floor(N * k / 100)).
        rows, cols = top_cov_positions(advantages, log_prob, response_mask, lambda n: max(1, int(n * k_percent / 100)))
        penalty = torch.zeros_like(losses)
        penalty[rows, cols] = 1.0
        losses = losses + penalty * (coef * t.log_ratio.abs())
    return agg_loss(losses, response_mask, loss_agg_mode), t.clipfrac, t.ppo_kl, t.clipfrac_lower


@policy_loss("kl_cov")
def kl_cov_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None):
    """Upstream / original-paper KL-Cov on the unclipped surrogate; penalised fraction = kl_cov_ratio."""
    ratio_sel = float(cfg(config, "policy_loss.kl_cov_ratio", 0.0002))
    coef = float(cfg(config, "policy_loss.ppo_kl_coef", 1.0))
    if not ratio_sel > 0:
        raise ValueError(f"policy_loss.kl_cov_ratio: must be > 0, got {ratio_sel}")
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    losses = -advantages * ratio
    rows, cols = top_cov_positions(advantages, log_prob, response_mask, lambda n: max(1, int(n * ratio_sel)))
    penalty = torch.zeros_like(losses)
    penalty[rows, cols] = 1.0
    losses = losses + penalty * (coef * log_ratio.abs())
    zero = torch.zeros((), device=losses.device)
    return agg_loss(losses, response_mask, loss_agg_mode), zero, masked_mean(log_ratio.abs(), response_mask), zero


@policy_loss("clip_cov")
def clip_cov_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None, generator: Optional[torch.Generator] = None):
    """Upstream Clip-Cov: zero the gradient of a random clip_cov_ratio share of tokens with lb < cov < ub."""
    frac = float(cfg(config, "policy_loss.clip_cov_ratio", 0.0002))
    lb = float(cfg(config, "policy_loss.clip_cov_lb", 1.0))
    ub = float(cfg(config, "policy_loss.clip_cov_ub", 5.0))
    clip = cfg(config, "clip_ratio", 0.2)
    low, high = cfg(config, "clip_ratio_low", clip), cfg(config, "clip_ratio_high", clip)
    if not frac > 0:
        raise ValueError(f"policy_loss.clip_cov_ratio: must be > 0, got {frac}")
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1 - low, 1 + high)
    clipped_by_ppo = (loss2 > loss1) & (response_mask > 0)
    cov = (advantages - masked_mean(advantages, response_mask)) * (log_prob - masked_mean(log_prob.detach(), response_mask))
    cov = cov.detach().masked_fill((response_mask == 0) | clipped_by_ppo, -torch.inf)
    n_clip = max(int(frac * response_mask.sum().item()), 1)
    candidates = torch.nonzero((cov < ub) & (cov > lb) & (response_mask > 0))
    if len(candidates) > 0:
        perm = torch.randperm(len(candidates), generator=generator, device=candidates.device if generator is None else generator.device)
        candidates = candidates[perm[: min(n_clip, len(candidates))]]
    corr = torch.ones_like(advantages)
    corr[candidates[:, 0], candidates[:, 1]] = 0
    losses = torch.maximum(loss1, loss2) * corr
    zero = torch.zeros((), device=losses.device)
    return agg_loss(losses, response_mask, loss_agg_mode), masked_mean((corr == 0).float(), response_mask), masked_mean(-log_ratio, response_mask), zero
