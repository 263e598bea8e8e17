"""Regression tests for PPO results that were silently wrong under the configurations users run (LoRA with
activation checkpointing, bf16, models that ship a generation_config, modules_to_save, value_learning_rate, ...).
Each test failed before its fix."""

import copy
import logging

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from tokenizers import processors

from icegrt_trl import PPOConfig, PPOTrainer
from icegrt_trl.ppo import core
from icegrt_trl.ppo.data import decode_completions, prepare_prompt_dataset
from icegrt_trl.ppo.modeling import adapter_scope
from icegrt_trl.ppo.plugins import RunningMeanStdScaling, RunningStdScaling
from icegrt_trl.testbed import build_tokenizer, gold_reward, make_datasets, tiny_causal_lm

SMALL = dict(hidden_size=32, num_layers=2, num_heads=2)


@pytest.fixture(scope="module")
def prompts():
    return make_datasets(num_sft=10, num_preferences=10, num_pmp=10, num_pref_eval=10, num_unlabeled=64,
                         num_eval=8)["unlabeled"]


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], per_device_train_batch_size=4,
                num_mini_batches=2, gradient_accumulation_steps=1, num_ppo_epochs=1, max_steps=2, response_length=6,
                save_strategy="no", gradient_checkpointing=False, disable_tqdm=True, num_sample_generations=0,
                learning_rate=3e-3, temperature=1.0, stop_token="eos", logging_steps=1, seed=0)
    base.update(kw)
    return PPOConfig(**base)


def lora(**kw):
    base = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"], task_type="CAUSAL_LM",
                init_lora_weights=False)  # non-zero adapters: the policy and value adapters differ from the start
    base.update(kw)
    return LoraConfig(**base)


# ---------------------------------------------------------------- 1. value adapter under activation checkpointing
def _lora_run(tmp_path, prompts, **kw):
    tok = build_tokenizer()
    model = tiny_causal_lm("llama", tok, **SMALL)
    # step 1 is value warm-up (policy frozen), step 2 trains both; one rollout feeds both steps
    t = PPOTrainer(args=cfg(tmp_path, value_warmup_steps=1, max_steps=2, value_head_init_std=0.1, **kw),
                   processing_class=tok, model=model,
                   reward_model=gold_reward, train_dataset=prompts, peft_config=lora())
    w = t.model
    trained = {n: p.detach().clone() for n, p in w.named_parameters() if p.requires_grad}
    snapshots = []

    class AfterEachStep:  # a TrainerCallback: record the adapters after every optimizer step
        def __getattr__(self, name):
            return lambda *a, **k: None

        def on_step_end(self, args, state, control, **kwargs):
            snapshots.append({n: p.detach().clone() for n, p in w.named_parameters() if n in trained})

    t.add_callback(AfterEachStep())
    t.train()
    return trained, snapshots


@pytest.mark.parametrize("reentrant", [False, True])
def test_lora_updates_identical_with_activation_checkpointing(tmp_path, prompts, reentrant):
    start, plain = _lora_run(tmp_path / "plain", prompts)
    _, ckpt = _lora_run(tmp_path / "ckpt", prompts, gradient_checkpointing=True,
                        gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert len(plain) == len(ckpt) == 2
    value_keys = [n for n in start if ".value." in n]
    policy_keys = [n for n in start if ".default." in n]
    assert value_keys and policy_keys
    for step in range(2):
        for n in start:
            torch.testing.assert_close(ckpt[step][n], plain[step][n], atol=1e-5, rtol=0, msg=f"step {step + 1}: {n}")
    # warm-up: the value adapter moved, the policy adapter did not (reentrant checkpointing used to train it)
    assert all(torch.equal(ckpt[0][n], start[n]) for n in policy_keys)
    assert any(not torch.equal(ckpt[0][n], start[n]) for n in value_keys)
    assert any(not torch.equal(ckpt[1][n], start[n]) for n in policy_keys)


# ---------------------------------------------------------------- 2. sampling ignores the model's generation_config
def test_rollout_ignores_the_models_generation_settings(tmp_path, prompts, caplog):
    tok = build_tokenizer()
    model = tiny_causal_lm("llama", tok, **SMALL)
    vocab = len(tok)
    suppressed = [i for i in range(vocab // 2, vocab)]
    model.generation_config.suppress_tokens = suppressed
    model.generation_config.repetition_penalty = 1.5
    model.generation_config.min_new_tokens = 6
    with caplog.at_level(logging.WARNING, logger="icegrt_trl.ppo.generation"):
        t = PPOTrainer(args=cfg(tmp_path, max_steps=1, per_device_train_batch_size=8), processing_class=tok,
                       model=model, reward_model=gold_reward, train_dataset=prompts)
    assert set(t.ignored_generation_settings) >= {"suppress_tokens", "repetition_penalty", "min_new_tokens"}
    assert "suppress_tokens" in caplog.text and "repetition_penalty=1.5" in caplog.text
    t.train()
    b = t._last_rollout
    sampled = b["responses"][b["response_mask"].bool()]
    assert torch.isin(sampled, torch.tensor(suppressed)).any()  # the policy's own distribution was sampled
    assert model.generation_config.suppress_tokens == suppressed  # the user's model is left as it was


# ---------------------------------------------------------------- 3. one autocast: step-0 KL exactly 0 under bf16
@pytest.mark.parametrize("mini_batches", [1, 2])  # 1: the old log-probs come from the first training forward
@pytest.mark.parametrize("variant", ["full", "full_bf16_weights", "lora"])
def test_step0_kl_is_exactly_zero_with_bf16(tmp_path, prompts, variant, mini_batches):
    tok = build_tokenizer()
    model = tiny_causal_lm("llama", tok, **SMALL)
    if variant == "full_bf16_weights":
        model = model.to(torch.bfloat16)
    peft = lora(init_lora_weights=True) if variant == "lora" else None  # B = 0: policy = reference at step 0
    t = PPOTrainer(args=cfg(tmp_path, bf16=True, max_steps=1, per_device_train_batch_size=8,
                            num_mini_batches=mini_batches),
                   processing_class=tok, model=model, reward_model=gold_reward, train_dataset=prompts,
                   peft_config=peft)
    t.train()
    b = t._last_rollout
    assert torch.equal(b["logprobs"], b["ref_logprobs"])
    assert t.state.log_history[0]["objective/kl"] == 0.0


# ---------------------------------------------------------------- 6. modules_to_save switch with the adapters
def test_modules_to_save_are_switched_with_the_adapters(tmp_path, prompts):
    tok = build_tokenizer()
    model = tiny_causal_lm("llama", tok, **SMALL)
    original = copy.deepcopy(model).eval()
    t = PPOTrainer(args=cfg(tmp_path, max_steps=4, learning_rate=1e-2), processing_class=tok, model=model,
                   reward_model=gold_reward, train_dataset=prompts, peft_config=lora(modules_to_save=["lm_head"]))
    policy = t.model.policy
    assert "value" not in policy.base_model.model.lm_head.modules_to_save  # the value model has no LM head copy
    head_before = policy.base_model.model.lm_head.modules_to_save["default"].weight.detach().clone()
    t.train()
    assert not torch.equal(head_before, policy.base_model.model.lm_head.modules_to_save["default"].weight)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad(), adapter_scope(policy, None):
        ref_logits = policy(input_ids=ids).logits
    with torch.no_grad():
        assert torch.equal(ref_logits, original(input_ids=ids).logits)  # the reference is the untouched model
        assert not torch.equal(policy(input_ids=ids).logits, ref_logits)  # the policy has moved


# ---------------------------------------------------------------- 8. optimizer groups keep Trainer's weight decay
def test_value_learning_rate_keeps_weight_decay_split(tmp_path, prompts):
    tok = build_tokenizer()
    t = PPOTrainer(args=cfg(tmp_path, value_learning_rate=1e-2, weight_decay=0.1), processing_class=tok,
                   model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward, train_dataset=prompts)
    t.create_optimizer()
    names = {id(p): n for n, p in t.model.named_parameters()}
    seen = set()
    for g in t.optimizer.param_groups:
        for p in g["params"]:
            n = names[id(p)]
            seen.add(n)
            assert g["lr"] == (1e-2 if n.startswith("value_model.") else 3e-3), n
            no_decay = "norm" in n or n.endswith(".bias")
            assert g["weight_decay"] == (0.0 if no_decay else 0.1), n
    assert any("norm" in n for n in seen) and any(n.endswith(".bias") for n in seen)  # the value head's bias


# ---------------------------------------------------------------- 9. running std has a floor
def test_running_std_scaling_floors_a_zero_spread_batch():
    for scaler in (RunningStdScaling(), RunningMeanStdScaling()):
        first = scaler(torch.full((4,), 0.5))  # all scores equal: std 0
        assert first.abs().max() <= 0.5 / 0.01 + 1e-6
        nxt = scaler(torch.tensor([0.5, 0.6]))
        assert nxt.abs().max() < 100  # was × 1e8 before the floor
    assert RunningStdScaling()(torch.full((4,), 0.5))[0].item() == pytest.approx(50.0)  # 0.5 / 0.01


# ---------------------------------------------------------------- 10. kl_penalty="loss" needs a regularizing estimator
def test_kl_in_loss_defaults_to_k3_and_reward_keeps_k1(tmp_path):
    assert cfg(tmp_path, kl_penalty="loss").kl_estimator == "k3"
    assert cfg(tmp_path).kl_estimator == "k1"  # trl 1.12's default where it is sound


# ---------------------------------------------------------------- 11. smaller defects
def test_a_sampled_pad_token_does_not_end_the_response():
    pad, eos = 0, 1
    resp = torch.tensor([[5, pad, 7, eos, pad], [5, pad, 7, 8, 9], [eos, pad, pad, pad, pad]])
    out, mask, ended = core.truncate_at_stop(resp, [eos], pad)
    assert mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]
    assert out[1].tolist() == [5, pad, 7, 8, 9]


def test_text_prompts_get_the_bos_a_llama_tokenizer_adds():
    tok = build_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)])  # as Llama's tokenizers do
    ds = prepare_prompt_dataset(Dataset.from_dict({"prompt": ["sort 3 1 2 :"]}), tok, None)
    ids = ds[0]["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[1:] == tok("sort 3 1 2 :", add_special_tokens=False)["input_ids"]
    plain = prepare_prompt_dataset(Dataset.from_dict({"prompt": ["sort 3 1 2 :"]}), build_tokenizer(), None)
    assert plain[0]["input_ids"][0] != tok.bos_token_id  # the testbed tokenizer adds none


def test_completion_text_is_what_the_policy_wrote():
    tok = build_tokenizer()
    prompt = tok("sort 3 1 2 :", add_special_tokens=False)["input_ids"]
    completion = tok("1 2 3 <eos>", add_special_tokens=False)["input_ids"]
    # the word-level tokenizer joins words with one space: the completion adds " 1 2 3" to the prompt's text
    assert decode_completions(tok, [prompt], [completion]) == [" 1 2 3"]
    assert tok.decode(prompt) + decode_completions(tok, [prompt], [completion])[0] == \
        tok.decode(prompt + completion, skip_special_tokens=True)


# ---------------------------------------------------------------- 5. every backend: saving and restoring PPO state
def test_save_writes_the_consolidated_state_dict_trainer_passes(tmp_path, prompts):
    """Under ZeRO-3 / FSDP the live modules hold shards; Trainer passes the gathered state dict to `_save`."""
    from safetensors.torch import load_file

    tok = build_tokenizer()
    t = PPOTrainer(args=cfg(tmp_path), processing_class=tok, model=tiny_causal_lm("llama", tok, **SMALL),
                   reward_model=gold_reward, train_dataset=prompts)
    gathered = {k: torch.full_like(v, 0.25) for k, v in t.model.state_dict().items()}
    t._save(str(tmp_path / "out"), state_dict=gathered)
    policy = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert policy and all(torch.all(v == 0.25) for v in policy.values())
    head = load_file(str(tmp_path / "out" / "value_head.safetensors"))
    assert all(torch.all(v == 0.25) for v in head.values())
    backbone = load_file(str(tmp_path / "out" / "value_model" / "model.safetensors"))
    assert backbone and all(torch.all(v == 0.25) for v in backbone.values())
    live = t.model.policy.state_dict()
    assert not all(torch.all(v == 0.25) for v in live.values())  # the modules themselves were not touched


def test_resume_restores_ppo_state_without_load_from_checkpoint(tmp_path, prompts, monkeypatch):
    """Under DeepSpeed, Trainer restores weights through the engine and never calls `_load_from_checkpoint`: the PPO
    state (KL coefficient, reward moments, warm-up, rollouts done, half-used rollout) comes back through `train()`."""
    tok = build_tokenizer()
    kw = dict(kl_controller="adaptive", kl_target=0.1, kl_horizon=50, reward_scaling="running_meanstd",
              value_warmup_steps=3, max_steps=3, save_strategy="steps", save_steps=3)
    full = PPOTrainer(args=cfg(tmp_path / "a", **kw), processing_class=tok,
                      model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward, train_dataset=prompts)
    full.train()
    resumed = PPOTrainer(args=cfg(tmp_path / "b", **{**kw, "max_steps": 3}), processing_class=tok,
                         model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward,
                         train_dataset=prompts)
    monkeypatch.setattr(resumed, "_load_from_checkpoint", lambda *a, **k: None)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert resumed.kl_ctl.value == full.kl_ctl.value != 0.05
    assert resumed.reward_scaler.state_dict() == full.reward_scaler.state_dict()
    assert resumed.value_warmup.done == 3 and resumed._rollouts_done == full._rollouts_done == 2
    assert resumed._buffer is not None  # checkpoint-3 lies inside the second rollout: its rollout came back
