"""The method registry: every exploration method of the grid by name, and what it plugs into PPO.

Torch-free: importing it (e.g. to print a run's overrides) loads no loss. The policy losses register themselves in
POLICY_LOSSES when their modules are imported, which `load_policy_losses()` does (and `import baselines` on first
use of a loss).
"""

from __future__ import annotations

import importlib
from dataclasses import InitVar, dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

ENTROPY_KINDS = ("none", "full", "tre_k", "tre_p")
# TRE's trust regions as the paper (and the authors' scripts and kernel) set them: TRE-K's K, TRE-P's p, and the cap on
# the TRE-P candidate list. The TRE methods below, the kernel's defaults and the logged diagnostics all use these.
TRE_TOP_K = 2
TRE_TOP_P = 0.99
TRE_MAX_CANDIDATES = 256

# Policy losses by name, each with verl 0.4.1's `register_policy_loss` signature:
#   fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None, **extra)
#     -> (pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower)
# The backend registers each of them with verl under the same name, which starts with LOSS_PREFIX so that none
# shadows one of verl's.
POLICY_LOSSES: dict[str, Callable[..., tuple]] = {}
LOSS_PREFIX = "tre_"
# verl 0.4.1's own losses a Method may name instead: "vanilla" (its inline compute_policy_loss) and its registered
# upstream KL-Cov / Clip-Cov.
VERL_POLICY_LOSSES = ("vanilla", "kl_cov", "clip_cov")
FORKING_TOKENS_LOSS = "tre_forking_tokens"  # the loss that ranks tokens by the current policy's per-token entropy
_LOSS_MODULES = ("baselines.ppo", "baselines.forking_tokens", "baselines.kl_cov")
_loaded = False


def policy_loss(name: str) -> Callable:
    """Decorator: add a policy loss to POLICY_LOSSES under `name` (LOSS_PREFIX + a name)."""
    if not name.startswith(LOSS_PREFIX):
        raise ValueError(f"policy loss {name!r}: must start with {LOSS_PREFIX!r} (verl's registry holds the other names)")

    def register(fn: Callable) -> Callable:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is registered twice")
        POLICY_LOSSES[name] = fn
        return fn

    return register


def _check_policy_loss(method: "Method") -> None:
    if method.policy_loss not in VERL_POLICY_LOSSES and method.policy_loss not in POLICY_LOSSES:
        names = sorted({*POLICY_LOSSES, *VERL_POLICY_LOSSES} - {"vanilla"})
        raise ValueError(f"method {method.name}: policy_loss must be 'vanilla' or one of {', '.join(names)}, got {method.policy_loss!r}")


def load_policy_losses() -> Mapping[str, Callable[..., tuple]]:
    """Import every loss module (torch), check each METHODS entry names a registered loss; POLICY_LOSSES."""
    global _loaded
    if not _loaded:
        for module in _LOSS_MODULES:
            importlib.import_module(module)
        _loaded = True
        for method in METHODS.values():
            _check_policy_loss(method)
    return POLICY_LOSSES


@dataclass(frozen=True)
class Method:
    """One exploration method: a policy loss, an entropy term in the update, and their coefficients."""

    name: str
    summary: str
    # A POLICY_LOSSES or VERL_POLICY_LOSSES name; "tre_dual_clip" is the authors' PPO loss. "vanilla" = verl
    # 0.4.1's own compute_policy_loss, which clamps |log r| at 20 where the authors' fork does not (docs/fidelity.md,
    # "Losses").
    policy_loss: str = "tre_dual_clip"
    entropy: str = "none"  # which entropy the update's bonus uses: none / full / tre_k / tre_p
    entropy_coeff: float = 0.0
    top_k: Optional[int] = None  # TRE-K
    top_p: Optional[float] = None  # TRE-P
    max_candidates: int = TRE_MAX_CANDIDATES  # TRE-P candidate cap
    loss_params: Mapping[str, Any] = field(default_factory=dict)  # -> actor.policy_loss.<key>
    in_paper: bool = True  # part of the paper's grid (vs an extra variant of ours)
    coeff_known: bool = True  # False where the seed does not record the coefficient the authors used
    # Display name in tables and figures (default: the name). Init-only, not a dataclass field, so the records made
    # from a method's fields (a run's config.json, the workflow's rerun spec) hold only what decides a run:
    # relabelling a method reruns and re-hashes nothing.
    label: InitVar[str] = ""

    def __post_init__(self, label: str) -> None:
        object.__setattr__(self, "label", label or self.name)
        if self.entropy not in ENTROPY_KINDS:
            raise ValueError(f"method {self.name}: entropy must be one of {', '.join(ENTROPY_KINDS)}, got {self.entropy!r}")
        if _loaded:  # otherwise checked by load_policy_losses(), for every METHODS entry
            _check_policy_loss(self)
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
    Method("ppo", "vanilla PPO (GAE, critic, dual-clip; the authors' loss, no log-ratio clamp)", label="PPO"),
    Method("entropy", "PPO + full-vocabulary entropy bonus", entropy="full", entropy_coeff=0.001, coeff_known=False,
           label="PPO + entropy"),
    Method("kl_cov", "KL-Cov as the authors coded it (|log r| on the top 0.2 % tokens by cov, on dual-clip PPO)",
           policy_loss="tre_kl_cov_fork", loss_params={"kl_cov_k_percent": 0.2, "ppo_kl_coef": 1.0}, label="KL-Cov"),
    Method("forking_tokens", "Forking Tokens / 80-20: PG only on the top 20 % entropy tokens of each micro-batch",
           policy_loss=FORKING_TOKENS_LOSS, loss_params={"forking_top_ratio": 0.2, "forking_scope": "micro_batch"},
           label="Forking tokens"),
    Method("tre_k", f"TRE-K: entropy of the top-{TRE_TOP_K} logits, scaled by ln V / ln {TRE_TOP_K}", entropy="tre_k",
           entropy_coeff=0.001, top_k=TRE_TOP_K, label="TRE-K"),
    Method("tre_p", f"TRE-P: entropy of the p={TRE_TOP_P} nucleus (at most {TRE_MAX_CANDIDATES} tokens), scaled by ln V / ln n",
           entropy="tre_p", entropy_coeff=0.001, top_p=TRE_TOP_P, label="TRE-P"),
    # --- extra variants of ours -------------------------------------------------------------------------------
    Method("kl_cov_upstream", "KL-Cov as in the original paper / upstream verl (unclipped surrogate, ratio 2e-4)",
           policy_loss="kl_cov", loss_params={"kl_cov_ratio": 0.0002, "ppo_kl_coef": 1.0}, in_paper=False),
    Method("clip_cov", "Clip-Cov (upstream verl): detach a random 2e-4 share of tokens with 1 < cov < 5",
           policy_loss="clip_cov", loss_params={"clip_cov_ratio": 0.0002, "clip_cov_lb": 1.0, "clip_cov_ub": 5.0}, in_paper=False),
    Method("forking_tokens_batch", "Forking Tokens with the top-20 % mask over the whole mini-batch",
           policy_loss=FORKING_TOKENS_LOSS, loss_params={"forking_top_ratio": 0.2, "forking_scope": "batch"}, in_paper=False),
)

PAPER_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.in_paper)


def get_method(name: str) -> Method:
    """The Method called `name`; one clear error listing the valid names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {name!r}") from None
