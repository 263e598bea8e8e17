"""PPO optimizes the reward it is given: full models and QLoRA (4-bit NF4 base on the CPU)."""

import pytest
import torch

from icegrt_trl import PPOConfig, PPOTrainer
from icegrt_trl.testbed import build_tokenizer, make_datasets, tiny_causal_lm

SMALL = dict(hidden_size=64, num_layers=2, num_heads=2)


def starts_with_one(prompts, completions, **kw):
    """1 when the answer starts with the digit 1: a policy that sees it can learn it in a few updates."""
    return [1.0 if c.split()[:1] == ["1"] else 0.0 for c in completions]


@pytest.fixture(scope="module")
def prompts():
    return make_datasets(num_sft=10, num_preferences=10, num_pmp=10, num_pref_eval=10, num_unlabeled=256,
                         num_eval=8)["unlabeled"]


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], per_device_train_batch_size=32,
                num_mini_batches=2, gradient_accumulation_steps=1, num_ppo_epochs=2, max_steps=32, response_length=4, save_strategy="no",
                gradient_checkpointing=False, disable_tqdm=True, num_sample_generations=0, learning_rate=3e-3,
                lr_scheduler_type="constant", temperature=1.0, logging_steps=4, seed=0)
    base.update(kw)
    return PPOConfig(**base)


def nf4():
    """4-bit NF4 with fp32 compute: QLoRA as bitsandbytes runs it on the CPU."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)


def scores(trainer):
    return [h["objective/scores"] for h in trainer.state.log_history if "objective/scores" in h and "loss" in h]


def test_reward_callable_learns(tmp_path, prompts):
    tok = build_tokenizer()
    # 64 steps: over seeds 0-3 the last two logged scores reached 0.86-0.97 (after 32 steps they ranged 0.11-0.52,
    # too close to the start to tell learning from a lucky sampling stream)
    t = PPOTrainer(args=cfg(tmp_path, max_steps=64), processing_class=tok,
                   model=tiny_causal_lm("llama", tok, **SMALL), reward_model=starts_with_one, train_dataset=prompts)
    t.train()
    s = scores(t)
    assert s[0] < 0.15  # a random policy rarely starts with "1"
    assert sum(s[-2:]) / 2 > s[0] + 0.5, s


def test_qlora_4bit_cpu_learns_and_trains_both_adapters(tmp_path, sft_policy_dir):
    """QLoRA on the CPU: the SFT policy loaded in 4-bit NF4 hosts policy adapter, value adapter + head and the
    reference (adapters off); PPO against the gold reward raises its greedy gold score."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from icegrt_trl.testbed import gold_reward, mean_gold_score

    tok = build_tokenizer()
    bnb = nf4()
    data = make_datasets()
    held_out = data["eval"]["prompt"][:100]
    # scored on a load of its own: on a CPU with AVX512-BF16 this eval-mode forward repacks the 4-bit layers for
    # inference, and the trainer refuses a base in that state (see the tests below)
    before = mean_gold_score(AutoModelForCausalLM.from_pretrained(sft_policy_dir, quantization_config=bnb), tok,
                             held_out)
    model = AutoModelForCausalLM.from_pretrained(sft_policy_dir, quantization_config=bnb)
    assert model.is_loaded_in_4bit
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    args = cfg(tmp_path / "run", per_device_train_batch_size=64, num_mini_batches=2, gradient_accumulation_steps=1, num_ppo_epochs=2, max_steps=120,
               learning_rate=5e-4, response_length=12, stop_token="eos", logging_steps=10)
    t = PPOTrainer(args=args, processing_class=tok, model=model, reward_model=gold_reward,
                   train_dataset=data["unlabeled"], peft_config=lora)
    w = t.model
    assert t.ref_model is None and w.value_model.adapter == "value"
    assert set(w.policy.peft_config) == {"default", "value"}
    trainable = {n: p.detach().clone() for n, p in w.named_parameters() if p.requires_grad}
    t.train()
    changed = {n for n, p in w.named_parameters() if n in trainable and not torch.equal(trainable[n], p)}
    assert any(".default." in n for n in changed) and any(".value." in n for n in changed)
    assert "value_model.head.weight" in changed
    # Gradients flow through the 4-bit layers (bitsandbytes' MatMul4Bit autograd on the CPU), so it learns.
    with w.policy_scope():
        after = mean_gold_score(w.policy, tok, held_out)
    assert after > before + 0.03, (before, after)
    t.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "adapter_model.safetensors").exists()
    assert (tmp_path / "final" / "value" / "adapter_model.safetensors").exists()


def test_ppo_raises_gold_score_of_sft_policy(tmp_path, sft_policy):
    """From the SFT policy, PPO against the gold reward fixes what SFT imitated (the verbose habit, mistakes)."""
    from icegrt_trl.testbed import gold_reward, mean_gold_score

    model, tok = sft_policy
    data = make_datasets()
    held_out = data["eval"]["prompt"][:100]
    before = mean_gold_score(model, tok, held_out)
    args = cfg(tmp_path, per_device_train_batch_size=64, num_mini_batches=2, gradient_accumulation_steps=1, num_ppo_epochs=2, max_steps=120,
               learning_rate=1e-4, value_learning_rate=1e-3, response_length=12, stop_token="eos", logging_steps=20)
    t = PPOTrainer(args=args, processing_class=tok, model=model, reward_model=gold_reward,
                   train_dataset=data["unlabeled"])
    t.train()
    after = mean_gold_score(t.model.policy, tok, held_out)
    assert after > before + 0.08, (before, after)


def load_4bit(sft_policy_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(sft_policy_dir, quantization_config=nf4())
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for m in layers:  # what bitsandbytes sets on a CPU with AVX512-BF16, whatever this machine has
        m.support_avx512bf16_for_cpu = True
    return model, layers


def small_qlora_trainer(tmp_path, model):
    from peft import LoraConfig

    from icegrt_trl.testbed import gold_reward

    data = make_datasets(num_sft=4, num_preferences=4, num_pmp=4, num_pref_eval=4, num_unlabeled=16, num_eval=2)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    return PPOTrainer(args=cfg(tmp_path, per_device_train_batch_size=8, num_mini_batches=1, max_steps=2,
                               response_length=4), processing_class=build_tokenizer(), model=model,
                      reward_model=gold_reward, train_dataset=data["unlabeled"], peft_config=lora)


def test_qlora_base_keeps_its_backward_through_eval_mode_rollouts(tmp_path, sft_policy_dir):
    """On a CPU with AVX512-BF16, bitsandbytes repacks a Linear4bit weight for inference the first time the layer
    runs in eval mode without grad, and the repacked layer has no backward: PPO's rollouts did exactly that to the
    base it trains, and the LoRA adapters then learned only from the gradients that bypass every 4-bit matmul (the
    test above failed on such a CPU). The trainer keeps each 4-bit layer unpacked."""
    from bitsandbytes.functional import dequantize_4bit

    model, layers = load_4bit(sft_policy_dir)
    assert len(layers) > 7
    dequantized = [dequantize_4bit(m.weight.data, m.weight.quant_state).float() for m in layers]
    t = small_qlora_trainer(tmp_path, model)
    t.train()  # each rollout samples and scores in eval mode, without grad
    for m, w in zip(layers, dequantized):
        assert not getattr(m.weight.quant_state, "packing_format_for_cpu", False) and not m.support_avx512bf16_for_cpu
        x = torch.randn(3, w.shape[1], requires_grad=True)
        y = m(x)
        g = torch.randn_like(y)
        (grad,) = torch.autograd.grad(y, x, g)  # a repacked layer gives none (its output leaves the graph)
        assert torch.allclose(grad, g @ w, atol=1e-5)


def test_a_4bit_base_already_repacked_for_inference_is_refused(tmp_path, sft_policy_dir):
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    model, layers = load_4bit(sft_policy_dir)
    first = layers[0]  # as bitsandbytes leaves it after the user's own eval-mode forward
    first.weight.data, first.weight.quant_state = _convert_weight_packed_for_cpu(first.weight.data,
                                                                                 first.weight.quant_state)
    with pytest.raises(ValueError, match="repacked by bitsandbytes for CPU inference.*Load the 4-bit model again"):
        small_qlora_trainer(tmp_path, model)


def test_ppo_stage_judges_a_4bit_policy_then_trains_it(tmp_path, monkeypatch):
    """The PPO stage scores the loaded policy with the gold judge before PPOTrainer exists: an eval-mode forward
    that, on a CPU with AVX512-BF16, repacks a 4-bit base for inference. The stage keeps it trainable first."""
    import json

    import bitsandbytes.nn.modules as bnb_modules
    import yaml

    from icegrt_trl.cli import main

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)  # every Linear4bit as on such a CPU
    recipe = {"output_dir": str(tmp_path / "run"), "stages": {"ppo": {
        "model_name_or_path": "testbed:llama", "load_in_4bit": True, "use_peft": True, "lora_r": 8,
        "lora_target_modules": ["q_proj", "v_proj"], "dataset_name": "testbed", "reward_model_path": "gold",
        "max_steps": 2, "per_device_train_batch_size": 4, "num_mini_batches": 1, "response_length": 4,
        "num_sample_generations": 0, "save_strategy": "no", "report_to": "none", "bf16": False}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["pipeline", str(path)]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())["ppo"]
    assert results["train_steps"] == 2 and "gold_score_before" in results
