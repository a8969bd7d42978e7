"""Pieces every policy loss shares: verl-identical masked mean and loss aggregation, config access, registry."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from baselines.methods import POLICY_LOSSES, policy_loss  # noqa: F401  (the registry lives with the methods)

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of values where mask is set; same formula (and 1e-8 guard) as verl.utils.torch_functional."""
    return (values * mask).sum(dim=dim) / (mask.sum(dim=dim) + 1e-8)


def agg_loss(loss_mat: torch.Tensor, loss_mask: torch.Tensor, loss_agg_mode: str = "token-mean") -> torch.Tensor:
    """Aggregate a (batch, response) loss matrix to a scalar exactly as verl 0.4.1's core_algos.agg_loss."""
    if loss_agg_mode == "token-mean":
        return masked_mean(loss_mat, loss_mask)
    if loss_agg_mode == "seq-mean-token-sum":
        return torch.sum(loss_mat * loss_mask, dim=-1).mean()
    if loss_agg_mode == "seq-mean-token-mean":
        return (torch.sum(loss_mat * loss_mask, dim=-1) / torch.sum(loss_mask, dim=-1)).mean()
    if loss_agg_mode == "seq-mean-token-sum-norm":
        return torch.sum(loss_mat * loss_mask) / loss_mask.shape[-1]
    raise ValueError(f"loss_agg_mode: must be one of {', '.join(LOSS_AGG_MODES)}, got {loss_agg_mode!r}")


def cfg(config: Any, key: str, default: Any) -> Any:
    """Read dotted `key` from a verl actor config (DictConfig, dict or attribute object); default if absent/None."""
    node = config
    for part in key.split("."):
        if node is None:
            return default
        node = node.get(part, None) if isinstance(node, Mapping) else getattr(node, part, None)
    return default if node is None else node
