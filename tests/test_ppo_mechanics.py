"""PPOTrainer mechanics on tiny random models: resume, hooks, warm-up, PEFT value adapter, saving, options."""

import json
import os

import pytest
import torch
from datasets import Dataset

from icegrt_trl import PPOConfig, PPOHook, PPOTrainer
from icegrt_trl.testbed import build_tokenizer, gold_reward, make_datasets, tiny_causal_lm

SMALL = dict(hidden_size=32, num_layers=1, num_heads=2)


@pytest.fixture(scope="module")
def prompts():
    return make_datasets(num_sft=10, num_preferences=10, num_pmp=10, num_pref_eval=10, num_unlabeled=64,
                         num_eval=8)["unlabeled"]


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], per_device_train_batch_size=8,
                num_mini_batches=2, gradient_accumulation_steps=1, num_ppo_epochs=2, max_steps=4, response_length=6,
                save_strategy="no",
                gradient_checkpointing=False, disable_tqdm=True, num_sample_generations=0, learning_rate=3e-3,
                temperature=1.0, stop_token="eos", logging_steps=1, seed=0)
    base.update(kw)
    return PPOConfig(**base)


def trainer_for(tmp_path, prompts, seed=0, **kw):
    """``seed``: the model's; PPOConfig's own seed (sampling) is ``run_seed``."""
    tok = build_tokenizer()
    model = tiny_causal_lm("llama", tok, seed=seed, **SMALL)
    plugins = kw.pop("plugins", None)
    if "run_seed" in kw:
        kw["seed"] = kw.pop("run_seed")
    return PPOTrainer(args=cfg(tmp_path, **kw), processing_class=tok, model=model, reward_model=gold_reward,
                      train_dataset=prompts, plugins=plugins)


def metrics_by_step(history):
    return {h["step"]: {k: v for k, v in h.items() if "/" in k} for h in history if "objective/kl" in h}


def test_resume_continues_with_same_plugin_state_and_metrics(tmp_path, prompts):
    kw = dict(reward_scaling="running_meanstd", kl_controller="adaptive", kl_target=0.1, kl_horizon=100,
              value_warmup_steps=3, max_steps=8, save_strategy="steps", save_steps=2)
    full = trainer_for(tmp_path / "a", prompts, **kw)
    full.train()
    # checkpoint-6 lies in the middle of the second rollout (4 optimizer steps per rollout): the partly used rollout
    # comes back from the checkpoint; checkpoint-4 lies on a rollout boundary.
    for ckpt in (4, 6):
        folder = tmp_path / "a" / f"checkpoint-{ckpt}"
        saved = json.loads((folder / "icegrt_ppo_state.json").read_text())["plugins"]
        assert saved["value_warmup"] == {"steps": 3, "done": 3}
        assert saved["reward_scaling"]["count"] == 8 * (1 + (ckpt - 1) // 4)  # 8 sequences per rollout
        assert (folder / "icegrt_ppo_rollout_rank0.pt").exists() == (ckpt == 6)
        resumed = trainer_for(tmp_path / f"b{ckpt}", prompts, **kw)  # same start model: it is also the reference
        resumed.train(resume_from_checkpoint=str(folder))
        a = metrics_by_step(full.state.log_history)
        b = {s: m for s, m in metrics_by_step(resumed.state.log_history).items() if s > ckpt}  # history is restored
        assert sorted(b) == list(range(ckpt + 1, 9))
        for step in b:
            for key, value in a[step].items():
                assert b[step][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (ckpt, step, key)
        assert resumed.kl_ctl.value == pytest.approx(full.kl_ctl.value)
        assert resumed.reward_scaler.state_dict() == pytest.approx(full.reward_scaler.state_dict())
    assert full.kl_ctl.value != 0.05  # the adaptive controller moved


def test_hooks_see_and_change_data_in_order(tmp_path, prompts):
    calls = []

    class Recorder(PPOHook):
        def on_rollout(self, batch, trainer):
            calls.append("rollout")
            assert len(batch["completions"]) == 8

        def on_scores(self, batch, trainer):
            calls.append("scores")
            batch["scores"] = torch.full_like(batch["scores"], 5.0)  # the hook's scores are what PPO uses

        def on_rewards(self, batch, trainer):
            calls.append("rewards")

        def on_advantages(self, batch, trainer):
            calls.append("advantages")

        def on_kl_update(self, batch, trainer):
            calls.append("kl")

        def on_ppo_epoch_end(self, batch, trainer):
            calls.append("epoch")

    t = trainer_for(tmp_path, prompts, plugins=[Recorder()], max_steps=4)
    t.train()
    assert calls == ["rollout", "scores", "rewards", "advantages", "kl", "epoch", "epoch"]
    assert t.state.log_history[0]["objective/scores"] == 5.0


def test_value_warmup_freezes_policy(tmp_path, prompts):
    t = trainer_for(tmp_path, prompts, value_warmup_steps=4, max_steps=4)
    w = t.model
    policy_before = {k: v.clone() for k, v in w.policy.state_dict().items()}
    head_before = w.value_model.head.weight.clone()
    t.train()
    assert all(torch.equal(policy_before[k], v) for k, v in w.policy.state_dict().items())
    assert not torch.equal(head_before, w.value_model.head.weight)
    assert "loss/policy_avg" not in t.state.log_history[0]
    assert t.value_warmup.done == 4 and not t.value_warmup.active


def test_lora_value_adapter_on_shared_base_and_reference_is_adapters_off(tmp_path, prompts):
    from peft import LoraConfig

    tok = build_tokenizer()
    model = tiny_causal_lm("llama", tok, **SMALL)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                      init_lora_weights=False)  # non-zero adapters: policy ≠ reference from the start
    t = PPOTrainer(args=cfg(tmp_path, max_steps=4, save_strategy="no"), processing_class=tok, model=model,
                   reward_model=gold_reward, train_dataset=prompts, peft_config=lcfg)
    w = t.model
    assert t.ref_model is None and set(w.policy.peft_config) == {"default", "value"}
    trainable = {n for n, p in w.named_parameters() if p.requires_grad}
    assert any(".default." in n for n in trainable) and any(".value." in n for n in trainable)
    before = {n: p.detach().clone() for n, p in w.named_parameters() if p.requires_grad}
    t.train()
    changed = {n for n, p in w.named_parameters() if n in before and not torch.equal(before[n], p)}
    assert any(".default." in n for n in changed) and any(".value." in n for n in changed)
    assert "value_model.head.weight" in changed
    # reference log-probs are those of the base weights (adapters off), and the base is untouched
    b = t._last_rollout
    plain = tiny_causal_lm("llama", tok, **SMALL)
    with torch.no_grad():
        m = b["query_response_mask"]
        logits = plain(input_ids=b["query_responses"], attention_mask=m,
                       position_ids=(m.cumsum(1) - 1).clamp(min=0)).logits
    c = b["context_length"]
    ref = torch.log_softmax(logits[:, c - 1:-1], -1).gather(-1, b["responses"].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(ref * b["response_mask"], b["ref_logprobs"], atol=1e-4, rtol=1e-4)
    base_now = w.policy.get_base_model().state_dict()
    assert all(torch.equal(base_sd[k], base_now[k.replace(".weight", ".base_layer.weight")] if
                           k.replace(".weight", ".base_layer.weight") in base_now else base_now[k]) for k in base_sd)
    t.save_model(str(tmp_path / "final"))
    files = set(os.listdir(tmp_path / "final"))
    assert {"adapter_model.safetensors", "value_head.safetensors", "README.md", "value"} <= files
    card = (tmp_path / "final" / "README.md").read_text()
    assert "kl_controller" in card and "objective/scores" in card


TRL_METRICS = ("objective/kl", "objective/scores", "objective/rlhf_reward", "objective/entropy",
               "objective/non_score_reward", "policy/clipfrac_avg", "policy/approxkl_avg", "loss/policy_avg",
               "loss/value_avg", "val/ratio", "val/clipfrac_avg", "val/num_eos_tokens", "objective/kl_coef")


def one_rollout(tmp_path, prompts, **kw):
    """Train on exactly one rollout (4 optimizer steps) and return the trainer; same seed → same samples."""
    t = trainer_for(tmp_path, prompts, max_steps=4, **kw)
    t.train()
    log = t.state.log_history[0]
    for name in TRL_METRICS:
        assert name in log and log[name] == log[name], name  # present and not NaN
    return t


def test_kl_in_the_loss_leaves_it_out_of_the_rewards(tmp_path, prompts):
    t = one_rollout(tmp_path, prompts, kl_penalty="loss", value_learning_rate=1e-2)
    b = t._last_rollout
    assert t.args.kl_estimator == "k3"
    mask = b["response_mask"].float()
    last = mask.cumsum(1) == mask.sum(1, keepdim=True)  # the last real token
    expected = torch.where(last & mask.bool(), b["scaled_scores"][:, None], torch.zeros_like(mask))
    assert torch.equal(b["rewards"], expected)  # score on the last token and nothing else: no −β·KL
    assert "loss/kl_avg" in t.state.log_history[0]
    assert sorted({g["initial_lr"] for g in t.optimizer.param_groups}) == [3e-3, 1e-2]  # value_learning_rate
    shaped = one_rollout(tmp_path / "reward", prompts, kl_penalty="reward").state.log_history[0]
    assert "loss/kl_avg" not in shaped


def test_reward_options_change_what_ppo_optimizes(tmp_path, prompts):
    # run_seed 1: a rollout in which some of the 8 samples end with EOS and some do not (asserted below)
    base = one_rollout(tmp_path / "base", prompts, run_seed=1)._last_rollout
    t = one_rollout(tmp_path / "opts", prompts, whiten_rewards=True, missing_eos_penalty=1.0, kl_estimator="k2",
                    reward_scaling="running_std", reward_clip=1.0, run_seed=1)
    b = t._last_rollout
    assert torch.equal(b["responses"], base["responses"])  # same samples: every difference below is the options'
    # missing_eos_penalty: 1 subtracted from the gold score of responses without EOS
    gold = torch.tensor(gold_reward(b["prompts"], b["completions"]))
    assert not b["ended"].all() and b["ended"].any()
    assert torch.allclose(b["scores"], gold - (~b["ended"]).float())
    # running_std on the first batch: scores / population std of the batch, then clipped to ±1 (mean(x²)/σ² ≥ 1, so
    # at least one score reaches the clip)
    std = max(b["scores"].double().std(unbiased=False).item(), 0.01)
    assert torch.allclose(b["scaled_scores"], (b["scores"] / std).clamp(-1.0, 1.0), atol=1e-6)
    assert (b["scaled_scores"].abs() == 1.0).any()
    # k2 = ½ (log π − log π_ref)² per token
    mask = b["response_mask"].float()
    assert torch.allclose(b["kl"], 0.5 * (b["logprobs"] - b["ref_logprobs"]).square() * mask)
    # whiten_rewards: the returns come from rewards scaled to unit variance (not from the raw rewards)
    raw_returns = base["returns"]
    assert not torch.allclose(b["returns"], raw_returns)


def test_sampling_and_group_options(tmp_path, prompts):
    seen_ranks = []

    class TopKCheck(PPOHook):
        def on_rollout(self, batch, trainer):
            policy = trainer.model.policy
            with torch.no_grad():
                m = batch["query_response_mask"]
                logits = policy(input_ids=batch["query_responses"], attention_mask=m,
                                position_ids=(m.cumsum(1) - 1).clamp(min=0)).logits
            c = batch["context_length"]
            step_logits = logits[:, c - 1:-1]
            token_logit = step_logits.gather(-1, batch["responses"].unsqueeze(-1))
            ranks = (step_logits > token_logit).sum(-1)  # 0 = the most likely token
            seen_ranks.append(ranks[batch["response_mask"].bool()])

    t = one_rollout(tmp_path, prompts, num_samples_per_prompt=2, advantage_normalization="group", top_p=0.9,
                    top_k=5, gradient_accumulation_steps=2, per_device_train_batch_size=2, plugins=[TopKCheck()])
    b = t._last_rollout
    assert b["prompts"][0::2] == b["prompts"][1::2]  # two samples of each prompt, side by side
    assert seen_ranks[0].max() < 5  # top_k=5: no sampled token outside the 5 most likely
    mask = b["response_mask"].float()
    per_group = (b["advantages"] * mask).reshape(-1, 2 * mask.shape[1]).sum(1)
    assert torch.allclose(per_group, torch.zeros_like(per_group), atol=1e-4)  # whitened within each prompt's pair


def test_ptx_loss_mixed_into_policy_updates(tmp_path, prompts):
    tok = build_tokenizer()
    sft = Dataset.from_dict({"prompt": ["sort 3 1 2 :"] * 8, "completion": [" 1 2 3"] * 8})
    model = tiny_causal_lm("llama", tok, **SMALL)
    t = PPOTrainer(args=cfg(tmp_path, ptx_coef=0.5), processing_class=tok, model=model, reward_model=gold_reward,
                   train_dataset=prompts, ptx_dataset=sft)
    t.train()
    assert t.ptx.consumed == 4 * 4  # one batch of local_micro_batch_size (8 / 2) rows per micro-step
    assert "loss/ptx_avg" in t.state.log_history[0]
    with pytest.raises(ValueError, match="ptx_coef > 0 needs a `ptx_dataset`"):
        PPOTrainer(args=cfg(tmp_path, ptx_coef=0.5), processing_class=tok, model=model, reward_model=gold_reward,
                   train_dataset=prompts)


def test_evaluate_and_sample_generations_with_a_same_tokenizer_reward_model(tmp_path, prompts):
    """evaluate() scores greedy completions with a reward model that reads the policy's own token ids."""
    from icegrt_trl.testbed import tiny_sequence_classifier

    tok = build_tokenizer()
    rm = tiny_sequence_classifier("llama", tok, seed=1, **SMALL)
    t = PPOTrainer(args=cfg(tmp_path, num_sample_generations=2), processing_class=tok,
                   model=tiny_causal_lm("llama", tok, **SMALL), reward_model=[rm, gold_reward],
                   train_dataset=prompts, eval_dataset=prompts.select(range(6)))
    t.train()
    metrics = t.evaluate()
    # the expectation, computed without the trainer: greedy continuations by hand (argmax, one token at a time, each
    # prompt alone, stopping at EOS), scored by the reward model on prompt + response and by the gold reward
    policy, eos = t.model.policy.eval(), tok.eos_token_id
    rm_scores, completions = [], []
    with torch.no_grad():
        for row in t.eval_dataset:
            ids = list(row["input_ids"])
            response = []
            for _ in range(t.args.response_length):
                nxt = int(policy(input_ids=torch.tensor([ids + response])).logits[0, -1].argmax())
                response.append(nxt)
                if nxt == eos:
                    break
            rm_scores.append(rm(input_ids=torch.tensor([ids + response])).logits.item())
            completions.append(" " + tok.decode(response, skip_special_tokens=True))  # as TRL decodes completions
    gold = gold_reward(list(t.eval_dataset["prompt"]), completions)
    expected = sum(r + g for r, g in zip(rm_scores, gold)) / len(gold)
    assert metrics["eval_objective/scores"] == pytest.approx(expected, abs=1e-5)
    lines = (tmp_path / "sample_generations.jsonl").read_text().splitlines()
    assert len(lines) == t.num_rollouts == 1 and len(json.loads(lines[0])["completions"]) == 4


def test_metrics_are_keyed_by_mode(tmp_path, prompts):
    t = one_rollout(tmp_path, prompts, eval_strategy="no")
    train_log = t.state.log_history[0]
    assert "val/explained_variance" in train_log and train_log["val/explained_variance"] <= 1.0
    metrics = t.evaluate(prompts.select(range(4)))
    eval_log = t.state.log_history[-1]
    assert set(eval_log) >= {"eval_objective/scores", "eval_objective/response_length"}
    assert not any(k.startswith(("loss/", "policy/", "objective/kl")) for k in eval_log)  # no train values
    assert eval_log["eval_objective/scores"] == metrics["eval_objective/scores"]
