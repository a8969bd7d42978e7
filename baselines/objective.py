"""The PPO objective every method minimises, in one place: policy loss minus coefficient times aggregated entropy.

Per micro-batch, what verl 0.4.1's `DataParallelPPOActor.update_policy` minimises with `tre.backend.plugin` loaded
(before it divides by the gradient-accumulation steps; docs/fidelity.md, "Losses"):

    loss = pg_loss - aggregated_entropy(H) * entropy_coeff

  * pg_loss: the method's policy loss (POLICY_LOSSES): the authors' dual-clip PPO terms (`baselines/ppo.py`)
    aggregated over the response tokens; KL-Cov adds |log r| on the top-covariance tokens, Forking Tokens keeps only
    the top-entropy tokens.
  * H: the current policy's per-token entropy: full (`entropy`), TRE-K or TRE-P (`tre.trust_region_entropy`).
  * entropy_coeff: the run's `actor.entropy_coeff` (the registry's Method.entropy_coeff unless a grid overrides it).

The plug-in hands verl these pieces (the loss through verl's policy-loss registry, H through its entropy function)
and verl writes the line above; tests/backend/test_plugin.py proves that the patched actor's loss and gradients are
exactly ppo_objective's.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from baselines.common import agg_loss
from baselines.methods import FORKING_TOKENS_LOSS, load_policy_losses


def aggregated_entropy(entropy: torch.Tensor, response_mask: torch.Tensor, loss_agg_mode: str = "token-mean") -> torch.Tensor:
    """The entropy the bonus rewards: per-token entropy (batch, response) aggregated like the policy loss, a scalar."""
    return agg_loss(entropy, response_mask, loss_agg_mode)


def ppo_objective(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    entropy: Optional[torch.Tensor],
    *,
    policy_loss: str,
    entropy_coeff: float,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
) -> torch.Tensor:
    """A method's micro-batch loss (a scalar): pg_loss - aggregated_entropy(entropy) * entropy_coeff.

    Every tensor is (batch, response): log pi_old and log pi of the sampled tokens, advantages, response_mask (1 on
    response tokens), entropy (the current policy's, differentiable; needed when entropy_coeff != 0 and by Forking
    Tokens, which ranks tokens by it). policy_loss: a POLICY_LOSSES name; config: the verl actor config (clip
    ratios, policy_loss.<param>).
    """
    losses = load_policy_losses()
    if policy_loss not in losses:
        raise ValueError(f"policy_loss: must be one of {', '.join(sorted(losses))}, got {policy_loss!r}")
    extra = {"entropy": entropy} if policy_loss == FORKING_TOKENS_LOSS else {}
    pg_loss = losses[policy_loss](old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, **extra)[0]
    if entropy_coeff == 0:
        return pg_loss  # verl then computes no entropy for the loss
    return pg_loss - aggregated_entropy(entropy, response_mask, loss_agg_mode) * entropy_coeff
