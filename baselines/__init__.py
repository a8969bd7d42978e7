"""Exploration methods for PPO: policy losses (pure torch, verl's signature) and the METHODS registry.

Adding a baseline = one module here defining its loss with `@policy_loss("tre_name")` (listed in
`baselines.methods._LOSS_MODULES`) and one `Method(...)` entry in `baselines/methods.py`. What a method's update
minimises, in one line: `baselines.objective.ppo_objective`.

The registry names import without torch; the losses and tensor helpers load on first use, so that
`python -m tre.backend overrides` and the workflow's config check never import torch.
"""

import importlib

from baselines.methods import ENTROPY_KINDS, METHODS, PAPER_METHODS, Method, get_method, load_policy_losses

# name -> module, loaded on first access (PEP 562)
_LAZY = {
    "POLICY_LOSSES": "baselines.methods", "policy_loss": "baselines.methods",
    "LOSS_AGG_MODES": "baselines.common", "agg_loss": "baselines.common", "masked_mean": "baselines.common",
    "aggregated_entropy": "baselines.objective", "ppo_objective": "baselines.objective",
    "forking_count": "baselines.forking_tokens", "forking_mask": "baselines.forking_tokens",
    "PPOTerms": "baselines.ppo", "dual_clip_terms": "baselines.ppo",
}

__all__ = ["ENTROPY_KINDS", "METHODS", "PAPER_METHODS", "Method", "get_method", "load_policy_losses", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'baselines' has no attribute {name!r}")
    load_policy_losses()
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
