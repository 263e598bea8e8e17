"""PPO math against hand-computed values."""

import math

import pytest
import torch

from icegrt_trl.ppo import core


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_masked_mean_var_whiten():
    v, m = t([[1.0, 2.0, 100.0], [3.0, 4.0, 100.0]]), t([[1, 1, 0], [1, 1, 0]])
    assert core.masked_mean(v, m).item() == pytest.approx(2.5)
    # unbiased variance of 1,2,3,4 = 5/3
    assert core.masked_moments(v, m)[1].item() == pytest.approx(5 / 3)
    w = core.masked_whiten(v, m)
    assert w[0, 0].item() == pytest.approx((1 - 2.5) / math.sqrt(5 / 3), rel=1e-6)
    assert w[0, 2].item() == 0.0
    assert core.masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-9)
    # shift_mean=False keeps the mean
    assert core.masked_mean(core.masked_whiten(v, m, shift_mean=False), m).item() == pytest.approx(2.5)
    assert core.masked_mean(v, torch.zeros_like(m)).item() == 0.0


def test_masked_moments_all_reduce_matches_concatenation():
    a, b = t([[1.0, 2.0]]), t([[5.0, 7.0]])
    ones = torch.ones(1, 2, dtype=torch.float64)
    other = torch.stack([ones.sum(), b.sum(), b.square().sum()]).double()
    mean, var, n = core.masked_moments(a, ones, all_reduce_sum=lambda s: s + other)
    assert n.item() == 4 and mean.item() == pytest.approx(3.75)
    assert var.item() == pytest.approx(torch.tensor([1.0, 2, 5, 7]).var().item())


def test_group_whiten():
    v = t([[1.0], [3.0], [10.0], [10.0]])
    out = core.group_whiten(v, torch.ones_like(v), group_size=2)
    s = math.sqrt(2.0)  # unbiased std of (1, 3)
    assert out[:, 0].tolist() == pytest.approx([-1 / s, 1 / s, 0.0, 0.0], rel=1e-6)
    with pytest.raises(ValueError, match="groups of 3"):
        core.group_whiten(v, torch.ones_like(v), group_size=3)


def test_kl_estimators():
    lp, ref = t([-1.0]), t([-2.0])  # log r = ref - lp = -1
    assert core.kl_estimate(lp, ref, "k1").item() == pytest.approx(1.0)
    assert core.kl_estimate(lp, ref, "k2").item() == pytest.approx(0.5)
    assert core.kl_estimate(lp, ref, "k3").item() == pytest.approx(math.exp(-1) - 1 + 1)
    with pytest.raises(ValueError, match="k4"):
        core.kl_estimate(lp, ref, "k4")


def test_token_level_rewards_put_score_on_last_real_token():
    kl, mask = t([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]]), t([[1, 1, 1], [1, 0, 0]])
    rewards, non_score = core.token_level_rewards(t([1.0, 2.0]), kl, mask, kl_coef=0.5)
    torch.testing.assert_close(rewards, t([[-0.05, -0.1, 1 - 0.15], [2 - 0.25, 0, 0]]))
    assert non_score.sum().item() == pytest.approx(-0.55)


def test_gae_hand_computed():
    r, v, m = t([[0.0, 1.0, 0.0]]), t([[0.5, 0.2, 9.0]]), t([[1, 1, 0]])
    adv, ret = core.compute_gae(r, v, m, gamma=0.9, lam=0.5)
    d1 = 1.0 + 0.0 - 0.2           # last real token: next value 0
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    a0 = d0 + 0.9 * 0.5 * d1
    torch.testing.assert_close(adv, t([[a0, d1, 0.0]]))
    torch.testing.assert_close(ret, t([[a0 + 0.5, d1 + 0.2, 0.0]]))
    # gamma = lam = 1: advantage = return-to-go − V
    adv, _ = core.compute_gae(t([[1.0, 2.0]]), t([[0.0, 0.0]]), t([[1, 1]]), 1.0, 1.0)
    torch.testing.assert_close(adv, t([[3.0, 2.0]]))


def test_policy_loss_clipping():
    old = t([[0.0, 0.0]])
    new = t([[math.log(1.5), math.log(0.5)]])
    adv, m = t([[1.0, 1.0]]), t([[1, 1]])
    loss, st = core.policy_loss(new, old, adv, m, cliprange=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5 (unclipped)
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2)
    assert st["clipfrac"].item() == pytest.approx(0.5)
    assert st["ratio"].item() == pytest.approx(1.0)
    assert st["approxkl"].item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)


def test_value_loss_clipping():
    v, old, ret, m = t([[1.0, 0.1]]), t([[0.0, 0.0]]), t([[2.0, 0.0]]), t([[1, 1]])
    loss, st = core.value_loss(v, old, ret, m, cliprange_value=0.2)
    # token 0: max((1-2)^2, (0.2-2)^2) = 3.24; token 1: max(0.01, 0.01)=0.01
    assert loss.item() == pytest.approx(0.5 * (3.24 + 0.01) / 2)
    assert st["clipfrac"].item() == pytest.approx(0.5)
    loss, _ = core.value_loss(v, old, ret, m, cliprange_value=None)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.01) / 2)


def test_truncate_at_stop():
    pad, eos = 0, 1
    resp = torch.tensor([[5, 1, 7, 7], [5, 6, 7, 8], [5, 6, 0, 0]])
    out, mask, ended = core.truncate_at_stop(resp, [eos], pad)
    assert out.tolist() == [[5, 1, 0, 0], [5, 6, 7, 8], [5, 6, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]  # no stop token: pads were sampled, kept
    assert ended.tolist() == [True, False, False]
    assert core.last_token_index(mask).tolist() == [1, 3, 3]


def test_rollout_sizes_match_trl112_where_it_was_coherent():
    """A rollout = per_device × GA sequences (trl 1.12); each pass = num_mini_batches optimizer steps, each of GA
    micro-batches of per_device / num_mini_batches sequences; the user's fields are left as given
    (benchmarks/trl112_batch_semantics.py measures trl 1.12 itself, docs/migrating.md has the table)."""
    from icegrt_trl import PPOConfig

    args = PPOConfig(output_dir="/tmp/unused", per_device_train_batch_size=8, gradient_accumulation_steps=4,
                     num_mini_batches=2, num_ppo_epochs=3, use_cpu=True, bf16=False)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.num_mini_batches) == (8, 4, 2)
    assert args.local_batch_size == 32  # the rollout: 8 × 4
    assert args.local_mini_batch_size == 16  # one optimizer step: 32 / 2
    assert args.local_micro_batch_size == 4  # one forward/backward: 8 / 2, accumulated 4 times
    assert args.steps_per_rollout == 6  # 3 epochs × 2 mini-batches
    # trl 1.12 with GA = 1: a rollout of per_device sequences, num_mini_batches steps of per_device / nmb
    one = PPOConfig(output_dir="/tmp/unused", per_device_train_batch_size=8, num_mini_batches=4, use_cpu=True,
                    bf16=False)
    assert (one.local_batch_size, one.local_mini_batch_size, one.local_micro_batch_size) == (8, 2, 2)


def test_explained_variance_hand_computed():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, 9.0]])
    values = torch.tensor([[1.0, 2.0, 3.0, 3.0, -5.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # the padded token is ignored
    # residual [0, 0, 0, 1]: var = 1/4 − 1/16 = 0.1875; returns var = 1.25 → 1 − 0.15 = 0.85
    assert core.explained_variance(values, returns, mask).item() == pytest.approx(0.85)
    assert core.explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert core.explained_variance(torch.zeros_like(returns), torch.ones_like(returns), mask).item() == 0.0


def test_engine_importance_weights_hand_computed():
    lp = t([[-1.0, -2.0, -0.5], [-1.0, -1.0, -3.0]])  # the trainer's old log-probs
    elp = t([[-1.5, -1.0, -0.5], [-1.0, -3.0, 9.0]])  # the engine's; 9.0 sits on padding
    m = t([[1, 1, 1], [1, 1, 0]])
    # per-token log-ratios: [0.5, -1, 0] and [0, 2, (0: padding)]
    w = core.engine_importance_weights(lp, elp, m, "token_truncate", clip_max=3.0)
    assert torch.allclose(w, t([[math.exp(0.5), math.exp(-1), 1.0], [1.0, 3.0, 1.0]]))
    w = core.engine_importance_weights(lp, elp, m, "token_mask", clip_min=0.5, clip_max=3.0)
    assert torch.allclose(w, t([[math.exp(0.5), 0.0, 1.0], [1.0, 0.0, 1.0]]))
    # one weight per sequence from the summed log-ratio: -0.5 and 2
    w = core.engine_importance_weights(lp, elp, m, "sequence_truncate", clip_max=3.0)
    assert torch.allclose(w, t([[math.exp(-0.5)] * 3, [3.0] * 3]))
    w = core.engine_importance_weights(lp, elp, m, "sequence_mask", clip_max=3.0)
    assert torch.allclose(w, t([[math.exp(-0.5)] * 3, [0.0] * 3]))
    with pytest.raises(ValueError, match="token_truncate, token_mask"):
        core.engine_importance_weights(lp, elp, m, "tokens")
