"""verl 0.4.1's HF rollout under transformers >= 4.56: response tokens must advance their rotary positions."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tre.backend.cpu import apply_compat_shims, apply_cpu_shims


@pytest.fixture(scope="module")
def lively_policy(tmp_path_factory):
    """A tiny random policy with large weights, so that its greedy continuation depends on the positions."""
    from miniature.tiny_model import build

    return build(tmp_path_factory.mktemp("lively"), vocab_size=1024, seed=0, kind="policy", initializer_range=1.0)


def _rollout_and_prompts(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from verl import DataProto
    from verl.workers.rollout.hf_rollout import HFRollout

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    texts = ["What is $3 + 4$?", "Using the numbers [1, 2, 3], create an equation that equals 6."]
    enc = tok([tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
               for t in texts], return_tensors="pt", padding="max_length", max_length=128)
    position_ids = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # verl's compute_position_id_with_mask
    prompts = DataProto.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                   "position_ids": position_ids},
                                  meta_info={"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                                             "do_sample": False})
    config = OmegaConf.create({"response_length": 12, "do_sample": False, "n": 1, "temperature": 1.0, "top_p": 1.0,
                               "top_k": -1, "val_kwargs": {"top_k": -1, "top_p": 1.0, "temperature": 1.0}})
    return HFRollout(model, config), prompts, model, enc, tok


def test_hf_rollout_generates_what_the_model_generates_with_advancing_positions(lively_policy):
    from verl.workers.rollout.hf_rollout import HFRollout

    apply_compat_shims()
    apply_cpu_shims()  # torch.cpu.empty_cache, which the rollout calls
    rollout, prompts, model, enc, tok = _rollout_and_prompts(lively_policy)
    got = rollout._generate_minibatch(prompts).batch["responses"]
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        ref = model.generate(**enc, do_sample=False, max_new_tokens=12, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)[:, enc["input_ids"].shape[1]:]
    ref = torch.nn.functional.pad(ref, (0, 12 - ref.shape[1]), value=tok.pad_token_id)
    assert torch.equal(got, ref)
    assert "generate" not in vars(model)  # the wrapper is gone after the call
    # verl's own function (what runs without the shim) freezes every response token at the last prompt position
    frozen = HFRollout._generate_minibatch.__wrapped__(rollout, prompts).batch["responses"]
    assert not torch.equal(frozen, ref)
