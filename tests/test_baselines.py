"""Baseline policy losses: hand-computed values on tiny tensors (masks, ties), parity with verl 0.4.1's own losses,
and the authors' fork (verl 0.4.0, no log-ratio clamp) where |log r| > 20."""

import math

import pytest
import torch
from omegaconf import OmegaConf

import baselines
from baselines import METHODS, PAPER_METHODS, POLICY_LOSSES, agg_loss, forking_count, forking_mask, get_method

LN15 = math.log(1.5)

# Four valid tokens (old log-prob 0) and one masked token with absurd values:
#   a: A= 1, r=1.5 -> clipped to -1.2          b: A= 1, r=0.5 -> -0.5 (unclipped)
#   c: A=-1, r=4   -> 4, dual clip -> 3        d: A=-2, r=0.5 -> clipped to 1.6
ADV = torch.tensor([[1.0, 1.0, -1.0, -2.0, 50.0]])
LOGP = torch.log(torch.tensor([[1.5, 0.5, 4.0, 0.5, 100.0]]))
OLD = torch.zeros(1, 5)
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])


def test_dual_clip_ppo_hand_values():
    loss, clipfrac, ppo_kl, clipfrac_lower = POLICY_LOSSES["tre_dual_clip"](OLD, LOGP, ADV, MASK)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 3.0 + 1.6) / 4, rel=1e-6)
    assert clipfrac.item() == pytest.approx(0.5, rel=1e-6)  # tokens a and d
    assert clipfrac_lower.item() == pytest.approx(0.25, rel=1e-6)  # token c
    assert ppo_kl.item() == pytest.approx(-LN15 / 4, rel=1e-6)  # -(ln 1.5 + ln .5 + ln 4 + ln .5) / 4


def test_dual_clip_reads_clip_settings_from_config():
    cfg = OmegaConf.create({"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.6, "clip_ratio_c": 3.0})
    loss, *_ = POLICY_LOSSES["tre_dual_clip"](OLD, LOGP, ADV, MASK, "token-mean", cfg)
    assert loss.item() == pytest.approx((-1.5 - 0.5 + 3.0 + 1.6) / 4, rel=1e-6)  # a no longer clipped (1.5 < 1.6)
    with pytest.raises(ValueError, match="^clip_ratio_c: must be > 1.0"):
        POLICY_LOSSES["tre_dual_clip"](OLD, LOGP, ADV, MASK, "token-mean", {"clip_ratio_c": 1.0})


@pytest.mark.parametrize(
    "mode, expected",
    [("token-mean", 10 / 4), ("seq-mean-token-sum", 10 / 2), ("seq-mean-token-mean", (2 + 4) / 2), ("seq-mean-token-sum-norm", 10 / 3)],
)
def test_agg_loss_modes(mode, expected):
    mat = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert agg_loss(mat, mask, mode).item() == pytest.approx(expected, rel=1e-6)


def test_agg_loss_rejects_unknown_mode():
    with pytest.raises(ValueError, match=r"^loss_agg_mode: must be one of token-mean, .* got 'sum'$"):
        agg_loss(torch.ones(1, 2), torch.ones(1, 2), "sum")


def test_ppo_objective_subtracts_the_entropy_bonus_with_the_same_aggregation():
    ent = torch.tensor([[2.0, 2.0, 4.0, 4.0, 100.0]])  # token-mean over the valid tokens: 3.0 (the 100 is masked)
    pg = (-1.2 - 0.5 + 3.0 + 1.6) / 4  # test_dual_clip_ppo_hand_values
    loss = baselines.ppo_objective(OLD, LOGP, ADV, MASK, ent, policy_loss="tre_dual_clip", entropy_coeff=0.001)
    assert loss.item() == pytest.approx(pg - 0.001 * 3.0, rel=1e-6)
    plain = baselines.ppo_objective(OLD, LOGP, ADV, MASK, None, policy_loss="tre_dual_clip", entropy_coeff=0.0)
    assert torch.equal(plain, POLICY_LOSSES["tre_dual_clip"](OLD, LOGP, ADV, MASK)[0])  # no entropy term at coeff 0
    # Forking Tokens ranks by the same entropy: top-2 valid tokens by entropy are c and d
    forking = baselines.ppo_objective(OLD, LOGP, ADV, MASK, ent, policy_loss="tre_forking_tokens", entropy_coeff=0.0,
                                      config={"policy_loss": {"forking_top_ratio": 0.5}})
    assert forking.item() == pytest.approx((3.0 + 1.6) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="^policy_loss: must be one of tre_dual_clip, .* got 'kl_cov'$"):
        baselines.ppo_objective(OLD, LOGP, ADV, MASK, None, policy_loss="kl_cov", entropy_coeff=0.0)


# ---------------------------------------------------------------------------------------------- KL-Cov
# 8 valid tokens; centred cov(A, log pi) is largest at (1, 0) (0.689), then (0, 0) (0.258).
KA = torch.tensor([[1.0, 1.0, -1.0, -1.0, 0.0], [2.0, 0.0, 0.0, 0.0, 0.0]])
KL = torch.tensor([[-0.1, -0.2, -0.3, -0.4, -0.5], [-0.05, -1.0, -1.0, -1.0, -1.0]])
KM = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
# dual-clip per-token losses (old log-prob 0): -e^-0.1, -e^-0.2, 0.8, 0.8 (clipped at 1-0.2), 0, -2e^-0.05, 0, 0
K_BASE = -math.exp(-0.1) - math.exp(-0.2) + 0.8 + 0.8 - 2 * math.exp(-0.05)


def test_kl_cov_fork_penalises_top_0_2_percent_by_covariance():
    loss, clipfrac, ppo_kl, _ = POLICY_LOSSES["tre_kl_cov_fork"](torch.zeros(2, 5), KL, KA, KM)
    # max(1, int(8 * 0.2 / 100)) = 1 token: (1, 0), penalty |log r| = 0.05
    assert loss.item() == pytest.approx((K_BASE + 0.05) / 8, rel=1e-6)
    assert clipfrac.item() == pytest.approx(2 / 8, rel=1e-6)  # computed before the penalty
    assert ppo_kl.item() == pytest.approx((0.1 + 0.2 + 0.3 + 0.4 + 0.5 + 0.05 + 1 + 1) / 8, rel=1e-6)


def test_kl_cov_fork_count_and_coefficient_from_config():
    cfg = {"policy_loss": {"kl_cov_k_percent": 25.0, "ppo_kl_coef": 2.0}}
    loss, *_ = POLICY_LOSSES["tre_kl_cov_fork"](torch.zeros(2, 5), KL, KA, KM, "token-mean", cfg)
    # int(8 * 25 / 100) = 2 tokens: (1, 0) and (0, 0), penalty 2 * (0.05 + 0.1)
    assert loss.item() == pytest.approx((K_BASE + 2 * 0.15) / 8, rel=1e-6)


def test_kl_cov_fork_penalty_changes_the_gradient_only_on_selected_tokens():
    lp = KL.clone().requires_grad_(True)
    POLICY_LOSSES["tre_kl_cov_fork"](torch.zeros(2, 5), lp, KA, KM)[0].backward()
    lp2 = KL.clone().requires_grad_(True)
    POLICY_LOSSES["tre_dual_clip"](torch.zeros(2, 5), lp2, KA, KM)[0].backward()
    diff = (lp.grad - lp2.grad).abs() > 1e-9
    assert diff.nonzero().tolist() == [[1, 0]]


def _verl_loss(name: str):
    """verl 0.4.1's own registered loss, which the methods kl_cov_upstream and clip_cov run."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    return get_policy_loss_fn(name)


def _verl_config(**policy_loss):
    """An actor config as verl's losses read it: every key present, None where unset."""
    keys = ("kl_cov_ratio", "ppo_kl_coef", "clip_cov_ratio", "clip_cov_lb", "clip_cov_ub")
    return OmegaConf.create({"clip_ratio": 0.2, "clip_ratio_low": None, "clip_ratio_high": None,
                             "policy_loss": {**dict.fromkeys(keys), **policy_loss}})


def test_kl_cov_upstream_uses_unclipped_surrogate_and_fractional_ratio():
    cfg = _verl_config(kl_cov_ratio=0.25, ppo_kl_coef=1.0)
    loss, clipfrac, ppo_kl, _ = _verl_loss("kl_cov")(torch.zeros(2, 5), KL, KA, KM, "token-mean", cfg)
    unclipped = -math.exp(-0.1) - math.exp(-0.2) + math.exp(-0.3) + math.exp(-0.4) - 2 * math.exp(-0.05)
    assert loss.item() == pytest.approx((unclipped + 0.05 + 0.1) / 8, rel=1e-6)  # int(8 * 0.25) = 2 tokens
    assert clipfrac.item() == 0.0
    assert ppo_kl.item() == pytest.approx((0.1 + 0.2 + 0.3 + 0.4 + 0.5 + 0.05 + 1 + 1) / 8, rel=1e-6)


def test_clip_cov_detaches_random_tokens_inside_the_covariance_band():
    adv = torch.tensor([[3.0, -3.0, 0.0, 0.0]])
    logp = torch.tensor([[0.0, -2.0, -1.0, -1.0]])  # cov = [3, 3, 0, 0]: the first two lie in (1, 5)
    mask = torch.ones(1, 4)
    torch.manual_seed(0)  # verl draws the detached tokens with torch.randperm
    loss, clipfrac, _, _ = _verl_loss("clip_cov")(logp, logp, adv, mask, "token-mean", _verl_config())
    assert loss.item() in (pytest.approx(0.75), pytest.approx(-0.75))  # -A = [-3, 3, 0, 0], one of the two zeroed
    assert clipfrac.item() == pytest.approx(0.25, rel=1e-6)
    loss_all, clipfrac_all, _, _ = _verl_loss("clip_cov")(logp, logp, adv, mask, "token-mean", _verl_config(clip_cov_ratio=0.5))
    assert loss_all.item() == 0.0 and clipfrac_all.item() == pytest.approx(0.5, rel=1e-6)


# ---------------------------------------------------------------------------------------------- |log r| > 20
# The authors' compute_policy_loss (verl 0.4.0) has no clamp; verl 0.4.1's clamps log r to [-20, 20].
# Three valid tokens, old log-prob 0: t0 A=-1, log r=-25; t1 A=1, log r=-0.1; t2 A=0, log r=-0.2.
# cov(A, log pi) = [16.57, 8.33, 0] -> KL-Cov penalises t0 (max(1, int(3 * 0.2 / 100)) = 1 token).
# t0's dual-clip loss is -A * clip(e^-25, 0.8, 1.2) = 0.8; t1's is -e^-0.1; t2's is 0.
FAR_LP = torch.tensor([[-25.0, -0.1, -0.2]])
FAR_ADV = torch.tensor([[-1.0, 1.0, 0.0]])
FAR_MASK = torch.ones(1, 3)


def test_kl_cov_fork_does_not_clamp_the_log_ratio():
    lp = FAR_LP.clone().requires_grad_(True)
    loss, _, ppo_kl, _ = POLICY_LOSSES["tre_kl_cov_fork"](torch.zeros(1, 3), lp, FAR_ADV, FAR_MASK)
    assert loss.item() == pytest.approx((0.8 + 25.0 - math.exp(-0.1)) / 3, rel=1e-6)  # clamped: 0.8 + 20.0
    assert ppo_kl.item() == pytest.approx((25.0 + 0.1 + 0.2) / 3, rel=1e-6)  # clamped: (20 + 0.3) / 3
    loss.backward()
    # d|log r|/d log pi = -1 at t0 (the clamp would make it 0); t1 unclipped: -A r / 3; t2: 0
    torch.testing.assert_close(lp.grad, torch.tensor([[-1 / 3, -math.exp(-0.1) / 3, 0.0]]))


def test_dual_clip_and_forking_do_not_clamp_the_log_ratio():
    _, _, ppo_kl, _ = POLICY_LOSSES["tre_dual_clip"](torch.zeros(1, 3), FAR_LP, FAR_ADV, FAR_MASK)
    assert ppo_kl.item() == pytest.approx(25.3 / 3, rel=1e-6)
    lp = torch.tensor([[25.0, -0.1, -0.2]], requires_grad=True)  # A = -1 at t0 -> dual clip 3; t1, t2 as above
    adv = torch.tensor([[1.0, 1.0, 0.0]])  # A = 1, log r = 25: max(-e^25, -1.2) = -1.2, no gradient through r
    ent = torch.tensor([[1.0, 0.5, 0.0]])  # top ceil(0.2 * 3) = 1 token by entropy: t0
    loss, _, ppo_kl, _ = POLICY_LOSSES["tre_forking_tokens"](torch.zeros(1, 3), lp, adv, FAR_MASK, "token-mean", None, entropy=ent)
    assert loss.item() == pytest.approx(-1.2, rel=1e-6)
    assert ppo_kl.item() == pytest.approx((-25.0 + 0.1 + 0.2) / 3, rel=1e-6)  # clamped: (-20 + 0.3) / 3


def test_clamp_log_ratio_20_is_verl_0_4_1s_loss():
    from verl.trainer.ppo.core_algos import compute_policy_loss

    lp = torch.tensor([[-25.0, 30.0, -0.1, 21.0]])
    adv = torch.tensor([[1.0, -1.0, 0.5, 2.0]])
    mask = torch.ones(1, 4)
    clamped = {"policy_loss": {"clamp_log_ratio": 20.0}}
    ours = POLICY_LOSSES["tre_dual_clip"](torch.zeros(1, 4), lp, adv, mask, "token-mean", clamped)
    theirs = compute_policy_loss(torch.zeros(1, 4), lp, adv, mask, cliprange=0.2, clip_ratio_c=3.0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    fork = POLICY_LOSSES["tre_dual_clip"](torch.zeros(1, 4), lp, adv, mask)
    assert fork[2].item() == pytest.approx((25.0 - 30.0 + 0.1 - 21.0) / 4, rel=1e-6)  # ppo_kl without the clamp
    assert theirs[2].item() == pytest.approx((20.0 - 20.0 + 0.1 - 20.0) / 4, rel=1e-6)


def test_paper_methods_use_the_forks_unclamped_losses():
    for name in PAPER_METHODS:
        m = METHODS[name]
        assert m.policy_loss in ("tre_dual_clip", "tre_kl_cov_fork", "tre_forking_tokens") and "clamp_log_ratio" not in m.loss_params


# ---------------------------------------------------------------------------------------------- Forking tokens
@pytest.mark.parametrize("n, expected", [(1, 1), (4, 1), (5, 1), (11, 3), (15, 3), (100, 20), (101, 21)])
def test_forking_count_is_the_authors_ceil(n, expected):
    assert forking_count(n, 0.2) == expected


def test_forking_mask_is_exact_top_k_even_with_ties():
    ent = torch.tensor([[0.5, 0.75, 0.75, 0.125, 0.75], [9.0, 9.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    top = forking_mask(ent, mask, 0.2)  # 5 valid tokens -> exactly 1, although three tie at 0.75
    assert top.dtype == torch.long and int(top.sum()) == 1
    assert ent[top.bool()].tolist() == [0.75] and int(top[1].sum()) == 0  # masked rows never selected


def test_forking_mask_maps_positions_across_rows_and_handles_empty():
    ent = torch.tensor([[0.1, 5.0, 0.2], [4.0, 0.3, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert forking_mask(ent, mask, 0.4).tolist() == [[0, 1, 0], [1, 0, 0]]  # int(5*.4+.9999)=2; 9.0 is masked
    assert forking_mask(ent, torch.zeros(2, 3), 0.2).sum().item() == 0
    with pytest.raises(ValueError, match=r"^top_ratio: must be in \[0, 1\]"):
        forking_mask(ent, mask, 1.5)


def test_forking_tokens_loss_aggregates_over_selected_tokens_only():
    ent = torch.tensor([[0.1, 0.2, 0.9, 0.8, 5.0]])  # top-2 valid by entropy: c and d (the 5.0 is masked)
    cfg = {"policy_loss": {"forking_top_ratio": 0.5}}
    loss, clipfrac, _, clipfrac_lower = POLICY_LOSSES["tre_forking_tokens"](OLD, LOGP, ADV, MASK, "token-mean", cfg, entropy=ent)
    assert loss.item() == pytest.approx((3.0 + 1.6) / 2, rel=1e-6)
    assert clipfrac.item() == pytest.approx(0.5, rel=1e-6) and clipfrac_lower.item() == pytest.approx(0.25, rel=1e-6)
    with pytest.raises(ValueError, match="^forking_tokens: needs the per-token entropy"):
        POLICY_LOSSES["tre_forking_tokens"](OLD, LOGP, ADV, MASK)


# ---------------------------------------------------------------------------------------------- parity with verl
def _random_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(6, 9, generator=g) * 3
    new = old + torch.randn(6, 9, generator=g) * 0.4
    adv = torch.randn(6, 9, generator=g)
    mask = (torch.rand(6, 9, generator=g) > 0.2).float()
    return old, new, adv, mask


@pytest.mark.parametrize("mode", baselines.LOSS_AGG_MODES)
def test_dual_clip_equals_verl_vanilla(mode):
    """Below |log r| = 20 the fork's loss and verl 0.4.1's are the same function."""
    from verl.trainer.ppo.core_algos import compute_policy_loss

    old, new, adv, mask = _random_batch(1)
    ours = POLICY_LOSSES["tre_dual_clip"](old, new, adv, mask, mode, None)
    theirs = compute_policy_loss(old, new, adv, mask, cliprange=0.2, clip_ratio_c=3.0, loss_agg_mode=mode)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------- registry
def test_paper_grid_methods_and_their_settings():
    assert PAPER_METHODS == ("ppo", "entropy", "kl_cov", "forking_tokens", "tre_k", "tre_p")
    assert (METHODS["tre_k"].entropy, METHODS["tre_k"].top_k, METHODS["tre_k"].entropy_coeff) == ("tre_k", 2, 0.001)
    assert (METHODS["tre_p"].entropy, METHODS["tre_p"].top_p, METHODS["tre_p"].max_candidates) == ("tre_p", 0.99, 256)
    assert (METHODS["entropy"].entropy, METHODS["entropy"].entropy_coeff, METHODS["entropy"].coeff_known) == ("full", 0.001, False)
    assert METHODS["kl_cov"].policy_loss == "tre_kl_cov_fork" and METHODS["kl_cov"].loss_params["kl_cov_k_percent"] == 0.2
    assert METHODS["forking_tokens"].policy_loss == "tre_forking_tokens" and METHODS["forking_tokens"].entropy_coeff == 0
    assert METHODS["ppo"].policy_loss == "tre_dual_clip" and METHODS["ppo"].entropy == "none"
    assert (METHODS["kl_cov_upstream"].policy_loss, METHODS["clip_cov"].policy_loss) == ("kl_cov", "clip_cov")  # verl's
    for m in METHODS.values():
        assert m.policy_loss in baselines.methods.VERL_POLICY_LOSSES or m.policy_loss in POLICY_LOSSES


def test_our_loss_names_cannot_shadow_verls():
    assert all(name.startswith("tre_") for name in POLICY_LOSSES)
    with pytest.raises(ValueError, match="^policy loss 'kl_cov': must start with 'tre_'"):
        baselines.policy_loss("kl_cov")


def test_get_method_error_lists_valid_names():
    with pytest.raises(ValueError, match=r"^method: must be one of ppo, entropy, kl_cov, .* got 'bogus'$"):
        get_method("bogus")


def test_method_validation():
    with pytest.raises(ValueError, match="entropy must be one of"):
        baselines.Method("x", "x", entropy="renyi")
    with pytest.raises(ValueError, match="policy_loss must be 'vanilla' or one of"):
        baselines.Method("x", "x", policy_loss="nope")
    with pytest.raises(ValueError, match="top_k is for entropy=tre_k"):
        baselines.Method("x", "x", entropy="full", entropy_coeff=0.1, top_k=2)
    with pytest.raises(ValueError, match="needs an entropy kind"):
        baselines.Method("x", "x", entropy_coeff=0.1)
