"""The verl plug-in without Ray: config parsing, the diagnostics' exact values, and a real DataParallelPPOActor
update (verl 0.4.1's own class, patched by the plug-in) for every method."""

from __future__ import annotations

import math
import os

from pathlib import Path

import pytest
import torch
import verl.trainer
import yaml
from omegaconf import OmegaConf

from baselines import forking_count, forking_mask, get_method, ppo_objective
from baselines.methods import FORKING_TOKENS_LOSS
from tre import trust_region_entropy
from tre.backend import plugin
from tre.backend.plugin import ActorSpec, PluginConfigError, actor_spec, diagnostics

LN = math.log


def test_actor_spec_reads_every_method_key():
    assert actor_spec({"tre_entropy": "tre_k", "entropy_top_k": 2}) == ActorSpec("tre_k", 2, None)
    assert actor_spec({"entropy_top_p": 0.99, "entropy_max_candidates": 64}) == ActorSpec("tre_p", None, 0.99, 64)
    assert actor_spec({"policy_loss": {"loss_mode": "tre_forking_tokens"}, "tre_diagnostics": True}) == ActorSpec(forking=True, diagnostics=True)
    assert not actor_spec({}).active
    assert actor_spec({"tre_entropy": "full"}).active and not actor_spec({"tre_entropy": "full"}).needs_logits


@pytest.mark.parametrize("config, field", [
    ({"tre_entropy": "tre_x"}, "actor.tre_entropy"),
    ({"tre_entropy": "tre_k"}, "actor.entropy_top_k"),
    ({"tre_entropy": "tre_p", "entropy_top_p": 1.0}, "actor.entropy_top_p"),
    ({"tre_entropy": "full", "entropy_top_k": 2}, "actor.tre_entropy"),
    ({"entropy_max_candidates": 0}, "actor.entropy_max_candidates"),
    ({"policy_loss": {"loss_mode": "tre_forking_tokens", "forking_scope": "global"}}, "actor.policy_loss.forking_scope"),
    ({"policy_loss": {"loss_mode": "tre_forking_tokens", "forking_scope": "batch"}, "use_dynamic_bsz": True},
     "actor.use_dynamic_bsz"),
    ({"tre_entropy": "tre_k", "entropy_top_k": 2, "use_fused_kernels": True}, "use_fused_kernels"),
    ({"policy_loss": {"loss_mode": "tre_forking_tokens"}, "use_fused_kernels": True}, "use_fused_kernels"),
])
def test_actor_spec_rejects_bad_settings_naming_the_key(config, field):
    with pytest.raises(PluginConfigError, match=field):
        actor_spec(config)


def test_fused_kernels_allowed_for_methods_that_need_no_logits():
    assert actor_spec({"use_fused_kernels": True, "tre_entropy": "full"}).entropy == "full"


def test_diagnostics_exact_values_and_mask():
    # Row 1: p = (0.5, 0.3, 0.2) -> top1 .5, top-2 tail .2, nucleus(.99) = all 3 tokens, tail 0.
    # Row 2: p = (0.995, 0.005, ~0) -> nucleus is the top token only (mass before token 2 = .995 >= .99).
    # Row 3 is masked out and holds garbage that would change every mean.
    p1 = torch.tensor([0.5, 0.3, 0.2])
    p2 = torch.tensor([0.995, 0.005, 1e-30])
    logits = torch.stack([p1.log(), p2.log(), torch.tensor([9.0, -9.0, 0.0])]).unsqueeze(0)
    mask = torch.tensor([[1, 1, 0]])
    d = diagnostics(logits, mask)
    h_top2_row1 = -(0.625 * LN(0.625) + 0.375 * LN(0.375)) * LN(3) / LN(2)
    h_top2_row2 = -(0.995 * LN(0.995) + 0.005 * LN(0.005)) * LN(3) / LN(2)
    h_full_row1 = -(0.5 * LN(0.5) + 0.3 * LN(0.3) + 0.2 * LN(0.2))
    assert d["actor/top1_prob_sum"] == pytest.approx((0.5 + 0.995) / 2, abs=1e-6)
    assert d["actor/tail_mass_k"] == pytest.approx((0.2 + 0.0) / 2, abs=1e-6)
    assert d["actor/tre_p_size"] == pytest.approx((3 + 1) / 2)
    assert d["actor/tail_mass_p"] == pytest.approx((0.0 + 0.005) / 2, abs=1e-6)
    assert d["actor/tre_k_entropy"] == pytest.approx((h_top2_row1 + h_top2_row2) / 2, rel=1e-5)
    # TRE-P: row 1 keeps all 3 tokens (scale ln3/ln3 = 1), row 2 is a single token -> exactly 0.
    assert d["actor/tre_p_entropy"] == pytest.approx(h_full_row1 / 2, rel=1e-5)
    assert d["actor/update_full_entropy"] == pytest.approx((h_full_row1 - 0.995 * LN(0.995) - 0.005 * LN(0.005)) / 2, rel=1e-4)
    assert diagnostics(logits, torch.zeros(1, 3)) == {}


def test_diagnostics_blocks_give_the_same_means(monkeypatch):
    torch.manual_seed(0)
    logits, mask = torch.randn(3, 7, 50), (torch.rand(3, 7) > 0.3).long()
    whole = diagnostics(logits, mask)
    monkeypatch.setattr(plugin, "_DIAG_BLOCK_ELEMS", 100)  # 2 rows per block
    assert diagnostics(logits, mask) == pytest.approx(whole, rel=1e-5)
    assert diagnostics(logits.reshape(21, 50), mask.reshape(21)) == pytest.approx(whole, rel=1e-5)


def test_rmpad_rows_select_the_logits_that_predict_response_tokens():
    # Two sequences of length 6 = prompt 3 (left padded) + response 3 (right padded).
    attention = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    response = attention[:, -3:]
    rows = plugin._rmpad_response_rows(attention, response)
    # Unpadded rows: seq 0 positions 1..4, seq 1 positions 0..5. Logit at position s predicts token s+1, so the
    # response tokens (positions 3.. in the padded layout) are predicted by positions 2..4 where valid.
    assert rows.tolist() == [False, True, True, False] + [False, False, True, True, True, False]


# ---- a real verl DataParallelPPOActor, patched by the plug-in, one update per method -------------------------


@pytest.fixture(scope="module")
def dist_group():
    import torch.distributed as dist

    from tre.backend.cpu import _shim_torch_cpu

    _shim_torch_cpu()  # verl's memory logger calls torch.cuda-only functions on torch.cpu
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        dist.init_process_group("gloo", rank=0, world_size=1)
    yield


@pytest.fixture(scope="module")
def ppo_batch(tiny_model):
    """8 sequences: 6 prompt + 10 response tokens (some right-padded), random advantages, old = current policy."""
    from transformers import AutoModelForCausalLM

    from verl import DataProto

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa")
    vocab = model.config.vocab_size
    bsz, prompt, resp = 8, 6, 10
    input_ids = torch.randint(0, vocab, (bsz, prompt + resp))
    attention = torch.ones(bsz, prompt + resp, dtype=torch.long)
    for i in range(bsz):
        attention[i, prompt + resp - i % 4 :] = 0  # responses of 10, 9, 8, 7 tokens (right padding)
    position_ids = torch.clamp(torch.cumsum(attention, -1) - 1, min=0)
    batch = {"input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids,
             "responses": input_ids[:, prompt:], "advantages": torch.randn(bsz, resp)}
    return model, batch


def _actor(model, method_name: str, **extra):
    import copy

    from verl.workers.actor.dp_actor import DataParallelPPOActor

    from tre.backend.profiles import method_overrides

    config = OmegaConf.load(Path(verl.trainer.__file__).parent / "config" / "ppo_trainer.yaml").actor_rollout_ref.actor
    OmegaConf.set_struct(config, False)
    for key, value in method_overrides(get_method(method_name)):
        OmegaConf.update(config, key.removeprefix("actor_rollout_ref.actor."), yaml.safe_load(value), force_add=True)
    OmegaConf.update(config, "tre_diagnostics", True, force_add=True)
    config.ppo_mini_batch_size, config.ppo_micro_batch_size_per_gpu, config.use_torch_compile = 8, 4, False
    for key, value in extra.items():
        OmegaConf.update(config, key, value, force_add=True)
    module = copy.deepcopy(model)
    return DataParallelPPOActor(config, module, torch.optim.AdamW(module.parameters(), lr=1e-3))


def _update(actor, batch):
    from verl import DataProto

    data = dict(batch)
    with torch.no_grad():
        old, _ = actor.compute_log_prob(DataProto.from_dict(tensors=data, meta_info={"micro_batch_size": 4, "temperature": 1.0, "use_dynamic_bsz": False}))
    data["old_log_probs"] = old
    return actor.update_policy(DataProto.from_dict(tensors=data, meta_info={"temperature": 1.0}))


@pytest.fixture(scope="module")
def update_metrics(dist_group, ppo_batch):
    import tre.backend.plugin  # noqa: F401  (what verl's external_lib import does)

    model, batch = ppo_batch
    return {name: _update(_actor(model, name), batch) for name in ("ppo", "entropy", "kl_cov", "forking_tokens", "tre_k", "tre_p")}


def test_every_method_logs_finite_losses_and_the_diagnostics(update_metrics):
    for name, metrics in update_metrics.items():
        for key in ("actor/pg_loss", "actor/grad_norm", *plugin.DIAG_KEYS):
            assert key in metrics, (name, key)
            assert all(math.isfinite(v) for v in metrics[key]), (name, key)
        assert len(metrics["actor/top1_prob_sum"]) == 2  # one value per micro-batch (2 x 4 sequences)


def test_tre_replaces_the_update_entropy_and_full_entropy_stays_full(update_metrics):
    tre_k, tre_p, full = update_metrics["tre_k"], update_metrics["tre_p"], update_metrics["entropy"]
    # The loss used exactly the current policy's TRE value, which differs from the full entropy.
    assert tre_k["actor/loss_entropy"] == pytest.approx(tre_k["actor/tre_k_entropy"], rel=1e-4)
    assert tre_p["actor/loss_entropy"] == pytest.approx(tre_p["actor/tre_p_entropy"], rel=1e-4)
    assert full["actor/loss_entropy"] == pytest.approx(full["actor/update_full_entropy"], rel=1e-3)
    for a, b in zip(tre_k["actor/loss_entropy"], tre_k["actor/update_full_entropy"]):
        assert abs(a - b) > 1e-2
    # Methods without an entropy bonus never compute one for the loss.
    assert "actor/loss_entropy" not in update_metrics["ppo"] and "actor/loss_entropy" not in update_metrics["kl_cov"]


def test_forking_keeps_the_policy_gradient_on_20_percent_of_tokens(update_metrics, ppo_batch):
    _, batch = ppo_batch
    mask = batch["attention_mask"][:, -10:]
    expected = [forking_count(int(m.sum()), 0.2) / int(m.sum()) for m in (mask[:4], mask[4:])]
    assert update_metrics["forking_tokens"]["actor/forking_token_frac"] == pytest.approx(expected)
    assert "actor/forking_token_frac" not in update_metrics["ppo"]


def test_forking_batch_scope_takes_the_top_share_over_each_whole_mini_batch(dist_group, ppo_batch, monkeypatch):
    import tre.backend.plugin  # noqa: F401

    from verl import DataProto

    model, batch = ppo_batch
    seen = []
    loss = plugin.POLICY_LOSSES["tre_forking_tokens"]
    monkeypatch.setitem(plugin.POLICY_LOSSES, "tre_forking_tokens",
                        lambda *a, entropy_top_mask, **k: seen.append(entropy_top_mask.clone()) or loss(*a, entropy_top_mask=entropy_top_mask, **k))
    mask = batch["attention_mask"][:, -10:]

    # one mini-batch of 8 in micro-batches of 4: the mask is the top 20 % of the old policy's entropies over all 8
    actor = _actor(model, "forking_tokens_batch")
    with torch.no_grad():
        _, entropy = actor.compute_log_prob(DataProto.from_dict(
            tensors=dict(batch), meta_info={"micro_batch_size": 8, "temperature": 1.0, "use_dynamic_bsz": False}),
            calculate_entropy=True)
    metrics = _update(actor, batch)
    assert torch.equal(torch.cat(seen), forking_mask(entropy.float(), mask, 0.2))
    assert int(torch.cat(seen).sum()) == forking_count(int(mask.sum()), 0.2)
    fracs = metrics["actor/forking_token_frac"]  # per micro-batch: no longer 20 % each, 20 % together
    assert sum(f * int(m.sum()) for f, m in zip(fracs, (mask[:4], mask[4:]))) == pytest.approx(forking_count(int(mask.sum()), 0.2))

    # two mini-batches of 4 in micro-batches of 2, two epochs: one mask per mini-batch, at that mini-batch's weights
    seen.clear()
    actor = _actor(model, "forking_tokens_batch", ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=2, ppo_epochs=2)
    _update(actor, batch)
    assert len(seen) == 8 and all(m.shape == (2, 10) for m in seen)
    for i in range(4):
        rows = mask[4 * (i % 2) : 4 * (i % 2) + 4]
        assert int(seen[2 * i].sum() + seen[2 * i + 1].sum()) == forking_count(int(rows.sum()), 0.2)
    assert plugin.STATE.forking_masks is None and "zero_grad" not in actor.actor_optimizer.__dict__


def test_forking_loss_differs_from_vanilla_on_the_same_batch(update_metrics):
    # Same weights, same batch, same old log-probs: only the token mask differs.
    assert update_metrics["forking_tokens"]["actor/pg_loss"] != pytest.approx(update_metrics["ppo"]["actor/pg_loss"], rel=1e-3)


def test_old_policy_entropy_is_verls_full_entropy(dist_group, ppo_batch):
    from verl import DataProto

    model, batch = ppo_batch
    actor = _actor(model, "tre_k")
    meta = {"micro_batch_size": 4, "temperature": 1.0, "use_dynamic_bsz": False}
    _, entropy = actor.compute_log_prob(DataProto.from_dict(tensors=dict(batch), meta_info=meta), calculate_entropy=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]).logits[:, -11:-1]
        verl_entropy = plugin._ORIG["entropy_from_logits"](logits)
    assert torch.equal(entropy, verl_entropy)  # verl's own function on the same logits, bit for bit
    assert entropy.float() == pytest.approx(trust_region_entropy(logits.float()), abs=0.07)  # one bf16 step at ~9
    assert (entropy.float() - trust_region_entropy(logits.float(), top_k=2)).abs().mean() > 0.1  # not the TRE value


def test_fused_kernels_are_refused_for_tre(dist_group, ppo_batch):
    model, _ = ppo_batch
    with pytest.raises(PluginConfigError, match="use_fused_kernels"):
        _actor(model, "tre_p", use_fused_kernels=True)


def test_policy_losses_are_registered_with_verl():
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    import baselines

    for name in baselines.POLICY_LOSSES:
        assert name in POLICY_LOSS_REGISTRY
    assert POLICY_LOSS_REGISTRY["tre_forking_tokens"] is plugin._forking_from_state
    assert POLICY_LOSS_REGISTRY["tre_kl_cov_fork"] is baselines.POLICY_LOSSES["tre_kl_cov_fork"]
    for name in ("kl_cov", "clip_cov"):  # the upstream variants run verl's own losses
        assert POLICY_LOSS_REGISTRY[name].__module__ == "verl.trainer.ppo.core_algos"


def test_bound_entropy_is_tre_with_grad_and_verls_without():
    torch.manual_seed(1)
    logits = torch.randn(5, 40)
    fn = plugin._bound_entropy(ActorSpec("tre_p", top_p=0.9), None)
    assert torch.equal(fn(logits), trust_region_entropy(logits, top_p=0.9))
    with torch.no_grad():
        assert torch.equal(fn(logits), plugin._ORIG["entropy_from_logits"](logits))
    # entropy_checkpointing recomputes the function in backward (called as verl 0.4.1 calls it): TRE gradient.
    x = logits.clone().requires_grad_(True)
    torch.utils.checkpoint.checkpoint(fn, x, use_reentrant=True).sum().backward()  # torch's default, verl passes none
    y = logits.clone().requires_grad_(True)
    trust_region_entropy(y, top_p=0.9).sum().backward()
    assert torch.allclose(x.grad, y.grad)


# ---- the patched actor minimises exactly baselines.ppo_objective ---------------------------------------------


def _method_entropy(logits: torch.Tensor, method) -> torch.Tensor | None:
    """The per-token entropy a method's objective takes, from the registry's fields (not the plug-in's config)."""
    if method.entropy == "tre_k":
        return trust_region_entropy(logits, top_k=method.top_k)
    if method.entropy == "tre_p":
        return trust_region_entropy(logits, top_p=method.top_p, max_candidates=method.max_candidates)
    if method.entropy == "full":
        return trust_region_entropy(logits)
    if method.policy_loss == FORKING_TOKENS_LOSS:
        with torch.no_grad():  # it only ranks the tokens
            return trust_region_entropy(logits)
    return None


@pytest.mark.parametrize("method_name", ["ppo", "entropy", "kl_cov", "forking_tokens", "tre_k", "tre_p"])
def test_patched_actor_minimises_exactly_the_pure_objective(dist_group, ppo_batch, method_name, monkeypatch):
    """verl's own update_policy, patched, backpropagates baselines.ppo_objective: same loss, same gradients, bit for bit."""
    from verl import DataProto

    model, batch = ppo_batch
    method = get_method(method_name)
    actor = _actor(model, method_name)
    module, config = actor.actor_module, actor.config
    data = dict(batch)
    with torch.no_grad():
        old, _ = actor.compute_log_prob(DataProto.from_dict(tensors=data, meta_info={"micro_batch_size": 4, "temperature": 1.0, "use_dynamic_bsz": False}))
    # old log-probs off the current policy, so that the clip, the dual clip and KL-Cov's |log r| all act
    data["old_log_probs"] = old + 0.5 * torch.randn(old.shape, generator=torch.Generator().manual_seed(3))

    # verl's side: the loss each micro-batch backpropagates, and the gradients before the optimizer step (which is
    # skipped, so that the weights stay those both sides differentiate at)
    verl_losses, verl_grads = [], []
    backward = torch.Tensor.backward
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *a, **k: verl_losses.append(self.detach().clone()) or backward(self, *a, **k))
    monkeypatch.setattr(actor, "_optimizer_step", lambda: verl_grads.append([p.grad.clone() for p in module.parameters()]) or torch.tensor(0.0))
    actor.update_policy(DataProto.from_dict(tensors=data, meta_info={"temperature": 1.0}))
    monkeypatch.undo()
    assert len(verl_losses) == 2 and len(verl_grads) == 1  # two micro-batches of 4, one mini-batch of 8

    # the pure side: the same forward as verl's (bf16 autocast, logits of the response positions), then the objective
    module.zero_grad(set_to_none=True)
    resp = data["responses"].shape[1]
    accumulation = config.ppo_mini_batch_size // config.ppo_micro_batch_size_per_gpu
    for i, rows in enumerate((slice(0, 4), slice(4, 8))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = module(input_ids=data["input_ids"][rows], attention_mask=data["attention_mask"][rows],
                            position_ids=data["position_ids"][rows], use_cache=False).logits
            logits = logits.div_(1.0)[:, -resp - 1 : -1, :]
            log_prob = plugin._ORIG["logprobs_from_logits"](logits, data["responses"][rows])
            entropy = _method_entropy(logits, method)
        args = (data["old_log_probs"][rows], log_prob, data["advantages"][rows], data["attention_mask"][rows, -resp:], entropy)
        loss = ppo_objective(*args, policy_loss=method.policy_loss, entropy_coeff=method.entropy_coeff,
                             loss_agg_mode=config.loss_agg_mode, config=config) / accumulation
        assert torch.equal(loss.detach(), verl_losses[i]), (loss.item(), verl_losses[i].item())
        if method.entropy_coeff:  # the entropy term is in the loss verl backpropagates
            without = ppo_objective(*args, policy_loss=method.policy_loss, entropy_coeff=0.0, config=config) / accumulation
            assert not torch.equal(without.detach(), verl_losses[i])
        loss.backward()
    for p, g in zip(module.parameters(), verl_grads[0]):
        assert torch.equal(p.grad, g)
