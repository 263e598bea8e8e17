"""PPO plugins against hand-computed values, registry look-up and state round trips."""


import pytest
import torch

from icegrt_trl.plugins import available_plugins, resolve_plugin
from icegrt_trl.ppo import plugins as P


def test_registered_names():
    assert available_plugins("reward_scaling") == ["fixed", "none", "running_meanstd", "running_std"]
    assert available_plugins("kl_controller") == ["adaptive", "fixed"]
    assert available_plugins("advantage_normalization") == ["group", "none", "whiten"]


def test_running_moments_match_numpy_over_batches():
    rm = P.RunningMoments()
    data = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0])]
    for d in data:
        rm.update(d.numel(), d.mean().item(), d.var(unbiased=False).item())
    allv = torch.cat(data)
    assert rm.mean == pytest.approx(allv.mean().item())
    assert rm.var == pytest.approx(allv.var(unbiased=False).item())
    assert rm.count == 5


def test_reward_scalers():
    s = torch.tensor([1.0, 3.0])
    assert resolve_plugin("reward_scaling", "none")(s).tolist() == [1.0, 3.0]
    assert resolve_plugin("reward_scaling", "fixed", scale=0.5)(s).tolist() == [0.5, 1.5]
    # first batch: mean 2, population std 1
    out = resolve_plugin("reward_scaling", "running_meanstd")(s)
    assert out.tolist() == pytest.approx([-1.0, 1.0], rel=1e-6)
    out = resolve_plugin("reward_scaling", "running_std")(s)
    assert out.tolist() == pytest.approx([1.0, 3.0], rel=1e-6)
    clipped = resolve_plugin("reward_scaling", "fixed", scale=10.0, clip=5.0)(s)
    assert clipped.tolist() == [5.0, 5.0]
    # all-reduce: statistics over both "processes"

    other = torch.tensor([2.0, 5.0, 13.0], dtype=torch.float64)
    sc = P.RunningMeanStdScaling()
    sc(s, all_reduce_sum=lambda x: x + other)
    assert sc.moments.mean == pytest.approx(9 / 4)  # values 1, 3, 2, 3


def test_scaler_state_round_trip():
    a = P.RunningMeanStdScaling()
    a(torch.tensor([1.0, 5.0]))
    b = P.RunningMeanStdScaling()
    b.load_state_dict(a.state_dict())
    x = torch.tensor([2.0, 4.0])
    assert a(x).tolist() == b(x).tolist()


def test_adaptive_kl_hand_computed():
    c = resolve_plugin("kl_controller", "adaptive", init_kl_coef=0.2, target=6.0, horizon=10000)
    c.update(current_kl=9.0, n_steps=100)  # e = clip(0.5) = 0.2
    assert c.value == pytest.approx(0.2 * (1 + 0.2 * 100 / 10000))
    c.update(current_kl=5.4, n_steps=100)  # e = -0.1
    assert c.value == pytest.approx(0.2 * 1.002 * (1 - 0.1 * 0.01))
    f = resolve_plugin("kl_controller", "fixed", init_kl_coef=0.05)
    f.update(100.0, 1000)
    assert f.value == 0.05
    d = P.AdaptiveKLController()
    d.load_state_dict(c.state_dict())
    assert d.value == c.value


def test_advantage_normalizers():
    adv, m = torch.tensor([[1.0, 3.0], [5.0, 0.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    w = resolve_plugin("advantage_normalization", "whiten")(adv, m)
    assert w[0].tolist() == pytest.approx([(1 - 3) / 2, 0.0], abs=1e-6)  # mean 3, unbiased std 2
    assert w[1, 1].item() == 0.0
    assert resolve_plugin("advantage_normalization", "none")(adv, m).tolist() == [[1.0, 3.0], [5.0, 0.0]]
    g = resolve_plugin("advantage_normalization", "group")
    with pytest.raises(ValueError, match="num_samples_per_prompt >= 2"):
        g(adv, m, group_size=1)
    out = g(adv, m, group_size=2)
    torch.testing.assert_close(out, w)  # one group = whole batch here


def test_value_warmup_counts_and_restores():
    w = P.ValueWarmup(steps=2)
    assert w.active
    w.step(); w.step(); w.step()
    assert w.done == 2
    assert not w.active
    v = P.ValueWarmup(steps=2)
    v.load_state_dict({"steps": 2, "done": 1})
    assert v.active
    with pytest.raises(ValueError):
        P.ValueWarmup(steps=-1)


def test_ptx_stream_resumes_where_it_left():
    rows = [[i, i + 1] for i in range(10)]
    a = P.PtxLoss(coef=0.1, batch_size=3, seed=0)
    a.set_data(rows)
    a.next_batch(0, "cpu")
    second = a.next_batch(0, "cpu")["input_ids"]
    b = P.PtxLoss(coef=0.1, batch_size=3, seed=0)
    b.set_data(rows)
    b.load_state_dict({"consumed": 3})
    assert torch.equal(b.next_batch(0, "cpu")["input_ids"], second)


def test_hooks_may_replace_batch():
    class Double(P.PPOHook):
        def on_scores(self, batch, trainer):
            return {**batch, "scores": batch["scores"] * 2}

    out = P.run_hooks([Double(), P.PPOHook()], "on_scores", {"scores": torch.tensor([1.0])}, None)
    assert out["scores"].item() == 2.0


def test_registered_functions_are_chosen_by_name_in_the_config(tmp_path):
    """Pure functions live in the one plugin registry: a user's policy loss and KL estimator are picked by name."""
    from icegrt_trl import PPOConfig, PPOTrainer
    from icegrt_trl.plugins import available_plugins
    from icegrt_trl.ppo import core
    from icegrt_trl.testbed import build_tokenizer, gold_reward, make_datasets, tiny_causal_lm

    calls = []

    @core.register_policy_loss("test_reinforce")
    def reinforce(logprobs, old_logprobs, advantages, mask, cliprange=None):
        calls.append(cliprange)
        return -core.masked_mean(logprobs * advantages, mask), {"clipfrac": torch.zeros(()),
                                                                "approxkl": torch.zeros(()), "ratio": torch.ones(())}

    @core.register_kl_estimator("test_abs")
    def kl_abs(logprobs, ref_logprobs):
        return (logprobs - ref_logprobs).abs()

    assert "test_reinforce" in available_plugins("policy_loss") and "gae" in available_plugins("advantage_estimator")
    tok = build_tokenizer()
    args = PPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], per_device_train_batch_size=4,
                     num_ppo_epochs=1, max_steps=1, response_length=4, save_strategy="no", disable_tqdm=True,
                     gradient_checkpointing=False, num_sample_generations=0, policy_loss_type="test_reinforce",
                     kl_estimator="test_abs", cliprange=0.3)
    t = PPOTrainer(args=args, processing_class=tok, model=tiny_causal_lm("llama", tok, hidden_size=32, num_layers=1,
                                                                          num_heads=2),
                   reward_model=gold_reward, train_dataset=make_datasets(num_unlabeled=8)["unlabeled"])
    t.train()
    assert calls == [0.3]
    b = t._last_rollout
    assert torch.equal(b["kl"], (b["logprobs"] - b["ref_logprobs"]).abs() * b["response_mask"])
    with pytest.raises(ValueError, match=r"Unknown policy_loss 'nope'. Available: \[.*'ppo_clip'"):
        PPOConfig(output_dir=str(tmp_path), use_cpu=True, policy_loss_type="nope")
