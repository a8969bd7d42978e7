"""KL-Cov (Cui et al. 2025) as the TRE authors coded it: penalise the tokens whose log-prob co-varies most with A.

`tre_kl_cov_fork` (the `kl_cov` method of the grid): the dual-clip PPO loss, plus ppo_kl_coef * |log r| on the top
k_percent % (default 0.2 %) of valid tokens by centred cov(A, log pi); clip metrics are computed before the penalty.
The original paper's KL-Cov and Clip-Cov (methods `kl_cov_upstream`, `clip_cov`) run as verl 0.4.1 registers them,
under its own names `kl_cov` and `clip_cov`.
"""

from __future__ import annotations

import torch

from baselines.common import agg_loss, cfg, policy_loss
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


@policy_loss("tre_kl_cov_fork")
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
