"""The method registry: every exploration method of the grid by name, and what it plugs into PPO."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

from baselines.common import POLICY_LOSSES

ENTROPY_KINDS = ("none", "full", "tre_k", "tre_p")


@dataclass(frozen=True)
class Method:
    """One exploration method: a policy loss, an entropy term in the update, and their coefficients."""

    name: str
    summary: str
    policy_loss: str = "vanilla"  # "vanilla" = verl's own dual-clip PPO; otherwise a baselines.POLICY_LOSSES name
    entropy: str = "none"  # which entropy the update's bonus uses: none / full / tre_k / tre_p
    entropy_coeff: float = 0.0
    top_k: Optional[int] = None  # TRE-K
    top_p: Optional[float] = None  # TRE-P
    max_candidates: int = 256  # TRE-P candidate cap
    needs_token_entropy: bool = False  # the loss reads the current micro-batch's per-token entropy
    loss_params: Mapping[str, Any] = field(default_factory=dict)  # -> actor.policy_loss.<key>
    in_paper: bool = True  # part of the paper's grid (vs an extra variant of ours)
    coeff_known: bool = True  # False where the seed does not record the coefficient the authors used

    def __post_init__(self) -> None:
        if self.entropy not in ENTROPY_KINDS:
            raise ValueError(f"method {self.name}: entropy must be one of {', '.join(ENTROPY_KINDS)}, got {self.entropy!r}")
        if self.policy_loss != "vanilla" and self.policy_loss not in POLICY_LOSSES:
            raise ValueError(f"method {self.name}: policy_loss must be 'vanilla' or one of {', '.join(sorted(POLICY_LOSSES))}, got {self.policy_loss!r}")
        if (self.entropy == "tre_k") != (self.top_k is not None) or (self.entropy == "tre_p") != (self.top_p is not None):
            raise ValueError(f"method {self.name}: top_k is for entropy=tre_k and top_p for entropy=tre_p")
        if self.entropy == "none" and self.entropy_coeff != 0:
            raise ValueError(f"method {self.name}: entropy_coeff {self.entropy_coeff} needs an entropy kind, got entropy='none'")
        object.__setattr__(self, "loss_params", MappingProxyType(dict(self.loss_params)))


def _registry(*methods: Method) -> Mapping[str, Method]:
    names = [m.name for m in methods]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"METHODS: duplicate names {dupes}")
    return MappingProxyType({m.name: m for m in methods})


METHODS: Mapping[str, Method] = _registry(
    # --- the paper's grid -------------------------------------------------------------------------------------
    Method("ppo", "vanilla PPO (GAE, critic, dual-clip)"),
    Method("entropy", "PPO + full-vocabulary entropy bonus", entropy="full", entropy_coeff=0.001, coeff_known=False),
    Method("kl_cov", "KL-Cov as the authors coded it (|log r| on the top 0.2 % tokens by cov, on dual-clip PPO)",
           policy_loss="kl_cov_fork", loss_params={"kl_cov_k_percent": 0.2, "ppo_kl_coef": 1.0}),
    Method("forking_tokens", "Forking Tokens / 80-20: PG only on the top 20 % entropy tokens of each micro-batch",
           policy_loss="forking_tokens", needs_token_entropy=True,
           loss_params={"forking_top_ratio": 0.2, "forking_scope": "micro_batch"}),
    Method("tre_k", "TRE-K: entropy of the top-2 logits, scaled by ln V / ln 2", entropy="tre_k", entropy_coeff=0.001, top_k=2),
    Method("tre_p", "TRE-P: entropy of the p=0.99 nucleus (at most 256 tokens), scaled by ln V / ln n",
           entropy="tre_p", entropy_coeff=0.001, top_p=0.99),
    # --- extra variants of ours -------------------------------------------------------------------------------
    Method("kl_cov_upstream", "KL-Cov as in the original paper / upstream verl (unclipped surrogate, ratio 2e-4)",
           policy_loss="kl_cov", loss_params={"kl_cov_ratio": 0.0002, "ppo_kl_coef": 1.0}, in_paper=False),
    Method("clip_cov", "Clip-Cov (upstream verl): detach a random 2e-4 share of tokens with 1 < cov < 5",
           policy_loss="clip_cov", loss_params={"clip_cov_ratio": 0.0002, "clip_cov_lb": 1.0, "clip_cov_ub": 5.0}, in_paper=False),
    Method("forking_tokens_batch", "Forking Tokens with the top-20 % mask over the whole mini-batch",
           policy_loss="forking_tokens", needs_token_entropy=True,
           loss_params={"forking_top_ratio": 0.2, "forking_scope": "batch"}, in_paper=False),
)

PAPER_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.in_paper)


def get_method(name: str) -> Method:
    """The Method called `name`; one clear error listing the valid names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {name!r}") from None
