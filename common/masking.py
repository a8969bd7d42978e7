"""transformers' SDPA causal mask built by broadcasting instead of `torch.vmap`: the same boolean tensor, for speed.

Every forward of a transformers model with padding builds its 4-D attention mask in `masking_utils.sdpa_mask`
(4.57: `sdpa_mask_recent_torch`), which evaluates the mask function through four nested `torch.vmap`s. On a CPU
that Python machinery, not the mask, is what it costs: about 2 ms a call, once per generated token, which was a
sixth of a tiny Countdown run's rollout (py-spy, 2026-12-03).

`install()` registers `sdpa_mask` below for the "sdpa" attention implementation. For the plain causal mask function
(what `create_causal_mask` passes unless it composes packed sequences or a model's own overlay) it computes the same
mask directly: query position q (from `cache_position`) sees key position k (`kv_offset + arange(kv_length)`) when
k <= q and, with a 2-D padding mask, when that mask is true at (batch, k). It decides "no mask, use SDPA's
is_causal" and pads the 2-D mask with transformers' own helpers, so it returns None exactly when transformers would.
Any other mask function goes to transformers' own `sdpa_mask`. The tests compare the two bit for bit.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from transformers.masking_utils import (AttentionMaskInterface, _ignore_causal_mask_sdpa, causal_mask_function,
                                        prepare_padding_mask)


def sdpa_mask(original: Callable, batch_size: int, cache_position: torch.Tensor, kv_length: int, kv_offset: int = 0,
              mask_function: Callable = causal_mask_function, attention_mask: Optional[torch.Tensor] = None,
              local_size: Optional[int] = None, allow_is_causal_skip: bool = True, **kwargs) -> Optional[torch.Tensor]:
    """transformers' `sdpa_mask` (B, 1, Q, KV) for the causal mask function; `original` for any other."""
    if mask_function is not causal_mask_function:
        return original(batch_size, cache_position, kv_length, kv_offset, mask_function, attention_mask, local_size,
                        allow_is_causal_skip, **kwargs)
    padding_mask = prepare_padding_mask(attention_mask, kv_length, kv_offset, _slice=False)
    if allow_is_causal_skip and _ignore_causal_mask_sdpa(padding_mask, cache_position.shape[0], kv_length, kv_offset,
                                                         local_size):
        return None
    kv_arange = torch.arange(kv_length, device=cache_position.device) + kv_offset
    causal = kv_arange.unsqueeze(0) <= cache_position.unsqueeze(-1)  # (Q, KV)
    mask = causal.expand(batch_size, 1, *causal.shape)
    if padding_mask is not None:
        mask = mask & padding_mask[:, kv_arange].to(torch.bool)[:, None, None, :]
    return mask.contiguous()


def install() -> None:
    """Register `sdpa_mask` for transformers' "sdpa" attention in this process (idempotent; the registered function's
    `__wrapped__` is transformers' own)."""
    original = AttentionMaskInterface._global_mapping["sdpa"]
    if getattr(original, "_tre_shim", False):
        return

    @functools.wraps(original)
    def fast(*args, **kwargs):
        return sdpa_mask(original, *args, **kwargs)

    fast._tre_shim = True
    AttentionMaskInterface.register("sdpa", fast)
