"""The verl 0.4.1 plug-in, imported in every worker through `actor_rollout_ref.model.external_lib=tre.backend.plugin`.

What the patched actor minimises is `baselines.objective.ppo_objective`: verl's update_policy forms
`pg_loss - agg(entropy) * entropy_coeff` itself, and the plug-in supplies the two pieces (tests/backend/test_plugin.py
proves the equality of value and gradients). What it changes, and only for an actor whose config asks for it (the
reference policy is never touched):
  * the entropy inside the policy-update loss becomes TRE-K / TRE-P (`tre.trust_region_entropy`); the logged
    `actor/entropy` (old policy, `compute_log_prob`, no grad) stays verl's full-vocabulary entropy, as in the fork;
  * Forking-Tokens gets the current micro-batch's per-token entropy even when `entropy_coeff == 0`
    (forking_scope=micro_batch, the authors'); with forking_scope=batch the top-entropy mask is taken over the
    whole mini-batch, from one extra no-grad forward of it at the weights its update starts from;
  * the baselines' policy losses are registered with verl's registry under their `baselines.POLICY_LOSSES` names
    (all `tre_`-prefixed, so verl's own `kl_cov` / `clip_cov` stay verl's);
  * every update logs `actor/top1_prob_sum` and the trust-region diagnostics (`actor/tre_k_entropy`,
    `actor/tre_p_entropy`, `actor/tre_p_size`, `actor/tail_mass_k`, `actor/tail_mass_p`) on response tokens,
    plus `actor/loss_entropy` (the entropy term the loss used) and `actor/forking_token_frac`;
  * `use_fused_kernels=True` is refused for TRE and Forking (fused kernels never expose the logits).

Actor config keys (Hydra `+actor_rollout_ref.actor.<key>`): tre_entropy (none|full|tre_k|tre_p), entropy_top_k,
entropy_top_p, entropy_max_candidates (default tre.grid.TRE_MAX_CANDIDATES), tre_diagnostics (bool); Forking reads policy_loss.forking_top_ratio
and policy_loss.forking_scope (micro_batch|batch).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from baselines import POLICY_LOSSES, aggregated_entropy, forking_mask
from baselines.forking_tokens import SCOPES as FORKING_SCOPES
from baselines.common import cfg
from baselines.methods import ENTROPY_KINDS, FORKING_TOKENS_LOSS
from tre.grid import TRE_MAX_CANDIDATES, TRE_TOP_K, TRE_TOP_P
from tre.kernel import trust_region_entropy, trust_region_stats

_DIAG_BLOCK_ELEMS = 1 << 25  # fp32 elements of scratch per diagnostics block (128 MiB)


class PluginConfigError(ValueError):
    """A bad TRE/forking setting in the actor config; one line naming the key and the allowed values."""


@dataclass(frozen=True)
class ActorSpec:
    """What the plug-in does for one actor, read from its config."""

    entropy: str = "none"  # which entropy the update's bonus uses
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    max_candidates: int = TRE_MAX_CANDIDATES
    forking: bool = False  # the policy loss needs per-token entropies of the current policy
    diagnostics: bool = False
    forking_scope: str = "micro_batch"  # which tokens compete for the top-entropy share: micro_batch | batch

    @property
    def needs_logits(self) -> bool:
        """True when the method cannot work from fused-kernel outputs."""
        return self.entropy in ("tre_k", "tre_p") or self.forking

    @property
    def active(self) -> bool:
        """True when the plug-in changes or observes this actor's update at all."""
        return self.needs_logits or self.diagnostics or self.entropy == "full"


def actor_spec(config: Any) -> ActorSpec:
    """Read and check the plug-in's keys of a verl actor config (DictConfig or dict)."""
    top_k = cfg(config, "entropy_top_k", None)
    top_p = cfg(config, "entropy_top_p", None)
    default_kind = "tre_k" if top_k is not None else ("tre_p" if top_p is not None else "none")
    kind = cfg(config, "tre_entropy", default_kind)
    if kind not in ENTROPY_KINDS:
        raise PluginConfigError(f"actor.tre_entropy: must be one of {', '.join(ENTROPY_KINDS)}, got {kind!r}")
    if kind == "tre_k" and (top_p is not None or isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise PluginConfigError(f"actor.entropy_top_k: tre_entropy=tre_k needs an integer K >= 1 and no entropy_top_p, got top_k={top_k!r}, top_p={top_p!r}")
    if kind == "tre_p" and (top_k is not None or isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p < 1):
        raise PluginConfigError(f"actor.entropy_top_p: tre_entropy=tre_p needs a number in (0, 1) and no entropy_top_k, got top_p={top_p!r}, top_k={top_k!r}")
    if kind in ("none", "full") and (top_k is not None or top_p is not None):
        raise PluginConfigError(f"actor.tre_entropy: entropy_top_k/entropy_top_p are set but tre_entropy={kind!r}; allowed with them: tre_k, tre_p")
    max_cand = cfg(config, "entropy_max_candidates", TRE_MAX_CANDIDATES)
    if isinstance(max_cand, bool) or not isinstance(max_cand, int) or max_cand < 1:
        raise PluginConfigError(f"actor.entropy_max_candidates: must be an integer >= 1, got {max_cand!r}")
    loss_mode = cfg(config, "policy_loss.loss_mode", "vanilla")
    forking = loss_mode == FORKING_TOKENS_LOSS
    scope = cfg(config, "policy_loss.forking_scope", "micro_batch")
    if forking and scope not in FORKING_SCOPES:
        raise PluginConfigError(f"actor.policy_loss.forking_scope: must be one of {', '.join(FORKING_SCOPES)}, got {scope!r}")
    if forking and scope == "batch" and cfg(config, "use_dynamic_bsz", False):
        raise PluginConfigError("actor.use_dynamic_bsz: must be False with forking_scope=batch "
                                "(dynamic micro-batches reorder the mini-batch's rows), got True")
    spec = ActorSpec(kind, top_k if kind == "tre_k" else None, float(top_p) if kind == "tre_p" else None, max_cand,
                     forking, bool(cfg(config, "tre_diagnostics", False)), scope if forking else "micro_batch")
    if spec.needs_logits and cfg(config, "use_fused_kernels", False):
        raise PluginConfigError(f"actor_rollout_ref.model.use_fused_kernels: must be False for tre_entropy={kind}"
                                f"{f' / loss_mode={FORKING_TOKENS_LOSS}' if forking else ''} (fused kernels never expose the logits), got True")
    return spec


# ----------------------------------------------------------------------------------------------------------------
# Pure pieces: the loss entropy and the diagnostics.


def loss_entropy(logits: torch.Tensor, spec: ActorSpec) -> torch.Tensor:
    """Per-position entropy the update's loss uses for `spec` (TRE-K / TRE-P; full entropy otherwise)."""
    if spec.entropy == "tre_k":
        return trust_region_entropy(logits, top_k=spec.top_k)
    if spec.entropy == "tre_p":
        return trust_region_entropy(logits, top_p=spec.top_p, max_candidates=spec.max_candidates)
    if spec.entropy == "full":
        return trust_region_entropy(logits)
    # Entropy only ranks tokens (Forking with coeff 0): no graph needed.
    with torch.no_grad():
        return trust_region_entropy(logits)


# metric name -> tre.trust_region_stats key
DIAG_KEYS = {"actor/top1_prob_sum": "top1_prob", "actor/tre_k_entropy": "tre_k_entropy", "actor/tre_p_entropy": "tre_p_entropy",
             "actor/tre_p_size": "tre_p_size", "actor/tail_mass_k": "tail_mass_k", "actor/tail_mass_p": "tail_mass_p",
             "actor/update_full_entropy": "full_entropy"}


def _diag_sums(x: torch.Tensor) -> torch.Tensor:
    """Per-metric sums over the rows of x (n, V), in DIAG_KEYS order."""
    # The diagnostics watch the paper's trust regions (K, p, cap), whatever the run's own method
    stats = trust_region_stats(x, top_k=min(TRE_TOP_K, x.shape[-1]), top_p=TRE_TOP_P, max_candidates=TRE_MAX_CANDIDATES)
    return torch.stack([stats[key].sum() for key in DIAG_KEYS.values()])


@torch.no_grad()
def diagnostics(logits: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Means over the positions where mask is set of the DIAG_KEYS statistics; logits (B, T, V) or (N, V)."""
    if logits.dim() == 2:
        logits, mask = logits.unsqueeze(0), mask.unsqueeze(0)
    rows = max(1, _DIAG_BLOCK_ELEMS // logits.shape[-1])
    total = torch.zeros(len(DIAG_KEYS), dtype=torch.float64, device=logits.device)
    count = 0
    for b in range(logits.shape[0]):
        for s in range(0, logits.shape[1], rows):
            keep = mask[b, s : s + rows].bool()
            n = int(keep.sum())
            if n:
                total += _diag_sums(logits[b, s : s + rows][keep]).double()
                count += n
    if count == 0:
        return {}
    return dict(zip(DIAG_KEYS, (total / count).tolist()))


# ----------------------------------------------------------------------------------------------------------------
# verl wiring: per-process state and the patches.


class _State:
    """What the current update micro-batch forward needs (one training thread per worker process)."""

    def __init__(self) -> None:
        self.spec: Optional[ActorSpec] = None  # set only inside a patched actor's grad-enabled forward
        self.diag_mask: Optional[torch.Tensor] = None  # which logit rows are response tokens
        self.token_entropy: Optional[torch.Tensor] = None  # (bsz, resp) of the last update forward, for Forking
        self.forking_masks: Optional[list[torch.Tensor]] = None  # batch scope: the masks of the coming micro-batches
        self.metrics: dict[str, list[float]] = {}

    def record(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.metrics.setdefault(key, []).append(float(value))


STATE = _State()
_PATCHED = False


def _entropy_dispatch(logits: torch.Tensor) -> torch.Tensor:
    """Stands in for verl's entropy_from_logits: the method's loss entropy inside an update, verl's own elsewhere."""
    spec = STATE.spec
    if spec is None or not torch.is_grad_enabled():
        return _ORIG["entropy_from_logits"](logits)
    return loss_entropy(logits, spec)


def _bound_entropy(spec: ActorSpec, verl_fn):
    """The actor's entropy function: the method's loss entropy with grad (update), verl's own without (old policy)."""

    def entropy(logits: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return (verl_fn or _ORIG["entropy_from_logits"])(logits)
        return loss_entropy(logits, spec)

    return entropy


def _rmpad_response_rows(attention_mask: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Bool over the unpadded (total_nnz) rows: True where the logit row predicts a response token."""
    bsz, seqlen = attention_mask.shape
    resp = response_mask.shape[1]
    sel = torch.zeros(bsz, seqlen, dtype=torch.bool, device=attention_mask.device)
    sel[:, seqlen - resp - 1 : seqlen - 1] = response_mask.bool()
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=True)[0]
    return sel.flatten()[indices]


def _logprobs_hook(logits, labels, *args, **kwargs):
    """Wraps dp_actor.logprobs_from_logits: sees every update forward's logits, logs the diagnostics first."""
    spec, mask = STATE.spec, STATE.diag_mask
    if spec is not None and spec.diagnostics and mask is not None and torch.is_grad_enabled():
        if mask.shape == logits.shape[:-1]:
            STATE.record(diagnostics(logits.detach(), mask))
    return _ORIG["logprobs_from_logits"](logits, labels, *args, **kwargs)


def _install() -> None:
    """Patch verl's DataParallelPPOActor and register the policy losses (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    from tre.backend.cpu import apply_compat_shims

    apply_compat_shims()
    import verl.utils.torch_functional as verl_F
    import verl.workers.actor.dp_actor as dp_actor
    from verl.trainer.ppo import core_algos

    _ORIG["entropy_from_logits"] = verl_F.entropy_from_logits
    _ORIG["logprobs_from_logits"] = dp_actor.logprobs_from_logits
    verl_F.entropy_from_logits = _entropy_dispatch
    dp_actor.logprobs_from_logits = _logprobs_hook
    cls = dp_actor.DataParallelPPOActor
    orig_init, orig_forward, orig_update = cls.__init__, cls._forward_micro_batch, cls.update_policy

    def __init__(self, config, *args, **kwargs):
        orig_init(self, config, *args, **kwargs)
        self._tre_spec = actor_spec(config)
        if self._tre_spec.diagnostics and self.use_fused_kernels:
            print("tre.backend.plugin: use_fused_kernels=True hides the logits; trust-region diagnostics are off")
            self._tre_spec = dataclasses.replace(self._tre_spec, diagnostics=False)
        if self._tre_spec.needs_logits or self._tre_spec.entropy == "full":
            # The remove-padding path calls this attribute (this also skips torch.compile). It is bound to the spec
            # rather than to STATE so that entropy_checkpointing's recomputation in backward gets the same function.
            self.compute_entropy_from_logits = _bound_entropy(self._tre_spec, getattr(self, "compute_entropy_from_logits", None))

    def _forward_micro_batch(self, micro_batch, temperature, calculate_entropy=False):
        spec: ActorSpec = getattr(self, "_tre_spec", ActorSpec())
        if not spec.active or not torch.is_grad_enabled():
            return orig_forward(self, micro_batch, temperature, calculate_entropy=calculate_entropy)
        response_mask = micro_batch["attention_mask"][:, -micro_batch["responses"].shape[1]:]
        if "loss_mask" in micro_batch:
            response_mask = micro_batch["loss_mask"][:, -micro_batch["responses"].shape[1]:]
        if self.use_ulysses_sp:
            diag_mask = None  # logits are sliced across ranks; diagnostics would see a fraction of the rows
        elif self.use_remove_padding:
            diag_mask = _rmpad_response_rows(micro_batch["attention_mask"], response_mask)
        else:
            diag_mask = response_mask
        stash = spec.forking and spec.forking_scope == "micro_batch"  # batch scope: the hook queued the masks
        STATE.spec, STATE.diag_mask = spec, diag_mask
        try:
            entropy, log_probs = orig_forward(self, micro_batch, temperature, calculate_entropy=calculate_entropy or stash)
        finally:
            STATE.spec, STATE.diag_mask = None, None
        if stash:
            STATE.token_entropy = entropy.detach()
        if calculate_entropy:
            loss_agg_mode = self.config.get("loss_agg_mode", "token-mean")
            STATE.record({"actor/loss_entropy": aggregated_entropy(entropy.detach().float(), response_mask, loss_agg_mode).item()})
            return entropy, log_probs
        return None, log_probs

    def update_policy(self, data):
        STATE.metrics, STATE.token_entropy, STATE.forking_masks = {}, None, None
        spec: ActorSpec = getattr(self, "_tre_spec", ActorSpec())
        optimizer = self.actor_optimizer
        if spec.forking and spec.forking_scope == "batch":
            optimizer.zero_grad = _mini_batch_masks_hook(self, data, optimizer.zero_grad)
        try:
            metrics = orig_update(self, data)
        finally:
            optimizer.__dict__.pop("zero_grad", None)  # back to the class's method
        for key, values in STATE.metrics.items():
            metrics.setdefault(key, []).extend(values)
        STATE.metrics, STATE.token_entropy, STATE.forking_masks = {}, None, None
        return metrics

    cls.__init__, cls._forward_micro_batch, cls.update_policy = __init__, _forward_micro_batch, update_policy

    for name, fn in POLICY_LOSSES.items():  # tre_-prefixed (baselines.methods.LOSS_PREFIX): none replaces verl's
        core_algos.register_policy_loss(name)(_forking_from_state if name == FORKING_TOKENS_LOSS else fn)
    _PATCHED = True


def _mini_batch_masks_hook(actor, data, zero_grad):
    """Wraps the optimizer's zero_grad, which verl 0.4.1 calls once before each mini-batch's micro-batches.

    At that point the weights are those the mini-batch's update starts from (they stay so over its micro-batches:
    gradients accumulate, one optimizer step at the end). The hook runs a no-grad forward of the whole mini-batch,
    takes the top-entropy mask over all its response tokens, and queues one slice per micro-batch, in verl's order
    (mini-batches split in order and revisited each epoch, micro-batches split in order).
    """
    from verl.utils.device import get_device_id

    config = actor.config
    keys = ["responses", "input_ids", "attention_mask", "position_ids"] + (["loss_mask"] if "loss_mask" in data.batch.keys() else [])
    mini_batches = data.select(batch_keys=keys).batch.split(config.ppo_mini_batch_size)
    micro = config.ppo_micro_batch_size_per_gpu
    ratio = float(cfg(config, "policy_loss.forking_top_ratio", 0.2))
    temperature = data.meta_info["temperature"]
    calls = itertools.count()

    def hook(*args, **kwargs):
        zero_grad(*args, **kwargs)
        mini = mini_batches[next(calls) % len(mini_batches)]
        entropies, masks = [], []
        with torch.no_grad():
            for part in mini.split(micro):
                part = part.to(get_device_id())
                entropy, _ = actor._forward_micro_batch(dict(part.items()), temperature, calculate_entropy=True)
                entropies.append(entropy.float())
                resp = part["responses"].shape[1]
                masks.append((part["loss_mask"] if "loss_mask" in part.keys() else part["attention_mask"])[:, -resp:])
        top = forking_mask(torch.cat(entropies), torch.cat(masks), ratio)
        STATE.forking_masks = list(top.split(micro))

    return hook


def _forking_from_state(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None):
    """verl-signature Forking-Tokens loss: the top-entropy mask of the current micro-batch (micro_batch scope, from
    the entropy its forward stashed) or its slice of the mini-batch's mask (batch scope, queued by the hook)."""
    ratio = float(cfg(config, "policy_loss.forking_top_ratio", 0.2))
    if STATE.forking_masks is not None:
        mask = STATE.forking_masks.pop(0) if STATE.forking_masks else None
        if mask is None or mask.shape != response_mask.shape:
            raise RuntimeError("forking_tokens (batch scope): the mini-batch masks do not line up with verl's "
                               "micro-batches (dynamic batch size or an unexpected verl version?)")
        mask = mask.to(response_mask.device)
    else:
        entropy = STATE.token_entropy
        if entropy is None or entropy.shape != response_mask.shape:
            raise RuntimeError("forking_tokens: no per-token entropy from the current micro-batch forward; "
                               "is tre.backend.plugin loaded as actor_rollout_ref.model.external_lib?")
        mask = forking_mask(entropy, response_mask, ratio)
    valid = float(response_mask.sum())
    STATE.record({"actor/forking_token_frac": float((mask * response_mask).sum()) / valid if valid else math.nan})
    return POLICY_LOSSES[FORKING_TOKENS_LOSS](old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, entropy_top_mask=mask)


_ORIG: dict[str, Any] = {}
_install()
