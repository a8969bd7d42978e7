"""Exploration methods for PPO: policy losses (pure torch, verl's signature) and the METHODS registry.

Adding a baseline = one module here defining its loss with `@policy_loss("name")` (imported below) and one
`Method(...)` entry in `baselines/methods.py`.
"""

from baselines.common import LOSS_AGG_MODES, POLICY_LOSSES, agg_loss, masked_mean, policy_loss
from baselines import entropy, forking_tokens, kl_cov, ppo  # noqa: F401  (registers the policy losses)
from baselines.entropy import entropy_bonus, policy_loss_with_entropy
from baselines.forking_tokens import forking_count, forking_mask
from baselines.methods import ENTROPY_KINDS, METHODS, PAPER_METHODS, Method, get_method
from baselines.ppo import PPOTerms, dual_clip_terms

__all__ = [
    "LOSS_AGG_MODES", "POLICY_LOSSES", "agg_loss", "masked_mean", "policy_loss", "entropy_bonus",
    "policy_loss_with_entropy", "forking_count", "forking_mask", "ENTROPY_KINDS", "METHODS", "PAPER_METHODS",
    "Method", "get_method", "PPOTerms", "dual_clip_terms",
]
