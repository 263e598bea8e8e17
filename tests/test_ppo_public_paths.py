"""The PPOTrainer arguments and PPOConfig fields a user can reach, each shown to do what it says: value_model=,
ref_model=, reward_weights, save_merged_model, ref_adapter_name, model_adapter_name, total_episodes."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from icegrt_trl import PPOConfig, PPOTrainer
from icegrt_trl.testbed import build_tokenizer, gold_reward, make_datasets, tiny_causal_lm, tiny_sequence_classifier

SMALL = dict(hidden_size=32, num_layers=1, num_heads=2)


@pytest.fixture(scope="module")
def prompts():
    return make_datasets(num_sft=4, num_preferences=4, num_pmp=4, num_pref_eval=4, num_unlabeled=64,
                         num_eval=4)["unlabeled"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], per_device_train_batch_size=8,
                num_mini_batches=2, num_ppo_epochs=1, max_steps=2, response_length=5, save_strategy="no",
                gradient_checkpointing=False, disable_tqdm=True, num_sample_generations=0, learning_rate=1e-2,
                temperature=1.0, stop_token="eos", logging_steps=1, seed=0)
    base.update(kw)
    return PPOConfig(**base)


def lora(**kw):
    return LoraConfig(**{**dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                init_lora_weights=False), **kw})


def logprobs_by_hand(model, batch):
    """log π(response token) from a plain forward of `model` on the rollout (temperature 1)."""
    m = batch["query_response_mask"]
    with torch.no_grad():
        logits = model(input_ids=batch["query_responses"], attention_mask=m,
                       position_ids=(m.cumsum(1) - 1).clamp(min=0)).logits
    c = batch["context_length"]
    lp = torch.log_softmax(logits[:, c - 1:-1].float(), -1).gather(-1, batch["responses"].unsqueeze(-1)).squeeze(-1)
    return lp * batch["response_mask"]


def test_value_model_initialises_the_critic(tmp_path, tok, prompts):
    value = tiny_sequence_classifier("llama", tok, seed=7, **SMALL)
    start = {k: v.clone() for k, v in value.model.state_dict().items()}
    head = value.score.weight.detach().clone()
    t = PPOTrainer(args=cfg(tmp_path), processing_class=tok, model=tiny_causal_lm("llama", tok, **SMALL),
                   reward_model=gold_reward, train_dataset=prompts, value_model=value)
    critic = t.model.value_model
    assert critic.backbone is value.model and torch.equal(critic.head.weight, head)  # its backbone and `score` head
    t.train()
    assert any(not torch.equal(start[k], v) for k, v in value.model.state_dict().items())  # the critic trained
    t.save_model(str(tmp_path / "out"))
    assert (tmp_path / "out" / "value_model" / "model.safetensors").is_file()


def test_ref_model_is_the_reference_of_the_kl(tmp_path, tok, prompts):
    ref = tiny_causal_lm("llama", tok, seed=5, **SMALL)  # another model than the policy
    t = PPOTrainer(args=cfg(tmp_path, max_steps=1), processing_class=tok, model=tiny_causal_lm("llama", tok, **SMALL),
                   reward_model=gold_reward, train_dataset=prompts, ref_model=ref)
    t.train()
    b = t._last_rollout
    torch.testing.assert_close(b["ref_logprobs"], logprobs_by_hand(ref, b), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(b["logprobs"], b["ref_logprobs"])


def test_reward_weights_combine_the_sources(tmp_path, tok, prompts):
    def one(prompts, completions, **kw):
        return [1.0] * len(prompts)

    def three(prompts, completions, **kw):
        return [3.0] * len(prompts)

    t = PPOTrainer(args=cfg(tmp_path, max_steps=1, reward_weights=[2.0, -1.0]), processing_class=tok,
                   model=tiny_causal_lm("llama", tok, **SMALL), reward_model=[one, three], train_dataset=prompts)
    t.train()
    assert torch.equal(t._last_rollout["scores"], torch.full((8,), 2.0 * 1 - 3.0))
    log = t.state.log_history[0]
    assert log["rewards/one/mean"] == 1.0 and log["rewards/three/mean"] == 3.0
    with pytest.raises(ValueError, match="1 reward_weights for 2 reward sources"):
        PPOTrainer(args=cfg(tmp_path, reward_weights=[1.0]), processing_class=tok,
                   model=tiny_causal_lm("llama", tok, **SMALL), reward_model=[one, three], train_dataset=prompts)


def test_save_merged_model_writes_the_trained_policy(tmp_path, tok, prompts):
    from transformers import AutoModelForCausalLM

    base = tiny_causal_lm("llama", tok, **SMALL)
    original = tiny_causal_lm("llama", tok, **SMALL).eval()
    t = PPOTrainer(args=cfg(tmp_path, save_merged_model=True), processing_class=tok, model=base,
                   reward_model=gold_reward, train_dataset=prompts, peft_config=lora())
    t.train()
    t.save_model(str(tmp_path / "out"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    policy = t.model.policy.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, policy(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(merged(input_ids=ids).logits, original(input_ids=ids).logits, atol=1e-3)


def test_ref_adapter_name_and_model_adapter_name(tmp_path, tok, prompts):
    model = get_peft_model(tiny_causal_lm("llama", tok, **SMALL), lora(), adapter_name="policy")
    model.add_adapter("ref", lora())  # a second, different adapter: the reference
    model.add_adapter("unused", lora())
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if ".ref." in n or ".unused." in n}
    t = PPOTrainer(args=cfg(tmp_path, model_adapter_name="policy", ref_adapter_name="ref", max_steps=2),
                   processing_class=tok, model=model, reward_model=gold_reward, train_dataset=prompts)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if ".policy." in n}
    t.train()
    b = t._last_rollout
    model.set_adapter("ref")
    ref_by_hand = logprobs_by_hand(model, b)
    torch.testing.assert_close(b["ref_logprobs"], ref_by_hand, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)  # only `policy` trains
    assert any(not torch.equal(start[n], p) for n, p in model.named_parameters() if n in start)
    with pytest.raises(ValueError, match="ref_adapter_name='nope' is not an adapter of the model"):
        PPOTrainer(args=cfg(tmp_path, model_adapter_name="policy", ref_adapter_name="nope"), processing_class=tok,
                   model=model, reward_model=gold_reward, train_dataset=prompts)


def test_total_episodes_sets_the_number_of_rollouts(tmp_path, tok, prompts):
    t = PPOTrainer(args=cfg(tmp_path, max_steps=-1, total_episodes=24), processing_class=tok,
                   model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward, train_dataset=prompts)
    assert t.num_rollouts == 3 and t.args.max_steps == 3 * 2  # 24 / 8 sequences; 2 steps per rollout
    t.train()
    assert t._rollouts_done == 3 and t.state.global_step == 6
