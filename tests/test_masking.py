"""common.masking: the SDPA causal mask by broadcasting is transformers' vmapped mask, bit for bit."""
from __future__ import annotations

import pytest
import torch
from transformers.masking_utils import (AttentionMaskInterface, causal_mask_function, sdpa_mask_recent_torch,
                                        sliding_window_causal_mask_function)

from common import masking


def _padding(kind: str, batch: int, length: int, g: torch.Generator):
    if kind == "none":
        return None
    if kind == "ones":
        return torch.ones(batch, length, dtype=torch.bool)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    ar = torch.arange(length)
    if kind == "left":
        return ar.unsqueeze(0) >= (length - lengths).unsqueeze(1)
    if kind == "right":
        return ar.unsqueeze(0) < lengths.unsqueeze(1)
    return torch.rand(batch, length, generator=g) < 0.7  # holes anywhere


@pytest.mark.parametrize("padding", ["none", "ones", "left", "right", "random"])
@pytest.mark.parametrize("q_len,past", [(1, 0), (1, 9), (5, 0), (5, 7), (13, 0), (3, 20)])
@pytest.mark.parametrize("allow_skip", [True, False])
def test_same_mask_as_transformers(padding, q_len, past, allow_skip):
    g = torch.Generator().manual_seed(q_len * 100 + past)
    batch, kv_length = 4, past + q_len
    attention_mask = _padding(padding, batch, kv_length, g)
    kwargs = dict(batch_size=batch, cache_position=torch.arange(past, past + q_len), kv_length=kv_length, kv_offset=0,
                  mask_function=causal_mask_function, attention_mask=attention_mask, allow_is_causal_skip=allow_skip,
                  dtype=torch.float32, config=None)
    ref = sdpa_mask_recent_torch(**kwargs)
    ours = masking.sdpa_mask(sdpa_mask_recent_torch, **kwargs)
    if ref is None:
        assert ours is None
    else:
        assert ours.dtype == ref.dtype == torch.bool and ours.shape == ref.shape == (batch, 1, q_len, kv_length)
        assert torch.equal(ours, ref)


@pytest.mark.parametrize("kv_offset", [0, 3])
def test_kv_offset_and_a_short_padding_mask(kv_offset):
    """A 2-D mask shorter than offset + length is padded (with False) as transformers pads it."""
    g = torch.Generator().manual_seed(kv_offset)
    attention_mask = torch.rand(3, 6, generator=g) < 0.8
    kwargs = dict(batch_size=3, cache_position=torch.arange(kv_offset + 2, kv_offset + 6), kv_length=6,
                  kv_offset=kv_offset, mask_function=causal_mask_function, attention_mask=attention_mask,
                  allow_is_causal_skip=False)
    assert torch.equal(masking.sdpa_mask(sdpa_mask_recent_torch, **kwargs), sdpa_mask_recent_torch(**kwargs))


def test_other_mask_functions_are_transformers_own():
    calls = []

    def original(*args, **kwargs):
        calls.append(args)
        return sdpa_mask_recent_torch(*args, **kwargs)

    window = sliding_window_causal_mask_function(3)
    kwargs = dict(batch_size=2, cache_position=torch.arange(6), kv_length=6, mask_function=window,
                  attention_mask=torch.ones(2, 6, dtype=torch.bool), allow_is_causal_skip=False)
    out = masking.sdpa_mask(original, **kwargs)
    assert len(calls) == 1 and torch.equal(out, sdpa_mask_recent_torch(**kwargs))


def test_install_gives_the_same_logits_gradients_and_tokens(tmp_path):
    """A left-padded batch through a tiny Qwen2: forward, backward and sampled tokens unchanged by install()."""
    from transformers import AutoModelForCausalLM

    from miniature.tiny_model import build

    model = AutoModelForCausalLM.from_pretrained(build(tmp_path / "m", vocab_size=1024, seed=0, kind="policy",
                                                       initializer_range=0.5), attn_implementation="sdpa")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (6, 12), generator=g)
    attention_mask = (torch.arange(12).unsqueeze(0) >= torch.tensor([0, 3, 5, 0, 8, 1]).unsqueeze(1)).long()
    used = []

    def run():
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=attention_mask).logits
        logits.float().logsumexp(-1).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        torch.manual_seed(0)
        with torch.no_grad():
            tokens = model.generate(input_ids=ids, attention_mask=attention_mask, do_sample=True, top_k=0,
                                    max_new_tokens=12, pad_token_id=0)
        return logits.detach(), grads, tokens

    original = AttentionMaskInterface._global_mapping["sdpa"]
    AttentionMaskInterface.register("sdpa", getattr(original, "__wrapped__", original))  # transformers' own
    try:
        ref = run()
        masking.install()
        installed = AttentionMaskInterface._global_mapping["sdpa"]
        assert getattr(installed, "_tre_shim", False)

        def counting(*args, **kwargs):
            used.append(1)
            return installed(*args, **kwargs)

        AttentionMaskInterface.register("sdpa", counting)
        ours = run()
    finally:
        AttentionMaskInterface.register("sdpa", original)
    assert used, "the model never asked for an SDPA mask"
    assert torch.equal(ours[0], ref[0])
    assert all(torch.equal(a, b) for a, b in zip(ours[1], ref[1]))
    assert torch.equal(ours[2], ref[2])
