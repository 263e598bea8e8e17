"""The memory plan: its counts against transformers' and PEFT's own modules, hand-computed terms, and the CLI."""

import pytest
import torch
import yaml

from icegrt_trl.cli import main
from icegrt_trl.plan import (
    KNOWN_ARCHITECTURES,
    Architecture,
    GiB,
    PlanError,
    activation_bytes,
    architecture_from_config,
    kv_cache_bytes,
    logits_bytes,
    parse_memory,
    weight_bytes,
)


def _config(arch: Architecture, model_type: str):
    from transformers import LlamaConfig, Qwen2Config

    cls = Qwen2Config if model_type == "qwen2" else LlamaConfig
    return cls(vocab_size=arch.vocab_size, hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers,
               num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
               intermediate_size=arch.intermediate_size, tie_word_embeddings=arch.tied_embeddings)


@pytest.mark.parametrize("name, model_type", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "llama"),
    ("Qwen/Qwen2.5-0.5B-Instruct", "qwen2"),
    ("Qwen/Qwen2.5-7B-Instruct", "qwen2"),
])
def test_parameter_counts_match_the_real_modules(name, model_type):
    """The plan's formula against the parameters transformers builds (on the meta device: no memory)."""
    from transformers import AutoModelForCausalLM

    arch = KNOWN_ARCHITECTURES[name]
    config = _config(arch, model_type)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert arch.parameters() == sum(p.numel() for p in model.parameters())
    assert architecture_from_config(config) == arch


def test_published_sizes():
    assert KNOWN_ARCHITECTURES["Qwen/Qwen2.5-0.5B-Instruct"].parameters() == 494_032_768
    assert KNOWN_ARCHITECTURES["testbed:smollm2"].parameters() == 134_515_008


@pytest.mark.parametrize("targets", [None, "all-linear", ["q_proj", "down_proj"]])
def test_lora_parameters_match_peft(targets):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    arch = Architecture(100, 64, 2, 4, 2, 96, False)
    model = AutoModelForCausalLM.from_config(_config(arch, "llama"))
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert arch.lora_parameters(4, targets) == trainable


def test_terms_by_hand():
    arch = Architecture(vocab_size=10, hidden_size=4, num_layers=2, num_heads=2, num_kv_heads=1,
                        intermediate_size=8, tied_embeddings=True)
    # kv = 1 head × 2 dims; per token and layer 7·4 + 2·2 + 5·8 = 72 values
    assert activation_bytes(arch, tokens=3, act_bytes=2, checkpointing=False) == 3 * 2 * 2 * 72
    assert activation_bytes(arch, tokens=3, act_bytes=2, checkpointing=True) == 3 * 2 * (2 * 4 + 72)
    assert logits_bytes(arch, tokens=3, act_bytes=2, with_grad=True) == 3 * 10 * (2 + 4 + 4)
    assert kv_cache_bytes(arch, rows=5, length=7, act_bytes=2) == 2 * 2 * 2 * 5 * 7 * 2
    # linear 2·(16 + 8 + 8 + 16 + 32·3) = 288; other: 40 embedding + 5·4 norms = 60
    assert weight_bytes(arch, "bfloat16") == (288 + 60) * 2
    assert weight_bytes(arch, "bfloat16", load_in_4bit=True) == int(288 * 0.52 + 60 * 2)


def test_parse_memory():
    assert parse_memory("24GB") == parse_memory("24 GiB") == parse_memory("24") == 24 * GiB
    with pytest.raises(PlanError, match="give a size such as 24GB"):
        parse_memory("lots")


@pytest.mark.parametrize("recipe, exit_code", [
    ("recipes/qwen2.5-0.5b.yaml", 0), ("recipes/qwen2.5-1.5b.yaml", 0), ("recipes/qwen2.5-7b-qlora.yaml", 0)])
def test_gpu_recipes_fit_24gb_by_the_plan(recipe, exit_code, capsys):
    assert main(["plan", recipe, "--gpu-memory", "24GB"]) == exit_code
    out = capsys.readouterr().out
    assert "ppo:" in out and "DOES NOT FIT" not in out


def test_plan_says_when_a_stage_does_not_fit(capsys):
    assert main(["plan", "recipes/qwen2.5-7b-qlora.yaml", "--gpu-memory", "8GB"]) == 1
    assert "ppo: " in (out := capsys.readouterr().out) and "DOES NOT FIT in 8 GiB" in out


def test_plan_reflects_the_options():
    """Checkpointing and LoRA shrink what the plan counts; a larger rollout chunk grows it."""
    from icegrt_trl.plan import Architecture, ModelSetup, plan_ppo, plan_sft
    from icegrt_trl.ppo import PPOConfig

    arch = KNOWN_ARCHITECTURES["Qwen/Qwen2.5-0.5B-Instruct"]
    full = ModelSetup(arch, "bfloat16", False, None, None, True, False)
    ckpt = ModelSetup(arch, "bfloat16", False, None, None, True, True)
    lora = ModelSetup(arch, "bfloat16", False, 16, "all-linear", True, True)
    assert plan_sft(ckpt, 4, 512).components["activations"] < plan_sft(full, 4, 512).components["activations"]
    assert plan_sft(lora, 4, 512).total < plan_sft(ckpt, 4, 512).total
    args = dict(output_dir="/tmp/x", per_device_train_batch_size=8, gradient_accumulation_steps=2, response_length=64,
                use_cpu=True, bf16=False)
    small = plan_ppo(lora, full, PPOConfig(**args, local_rollout_forward_batch_size=4), 128)
    large = plan_ppo(lora, full, PPOConfig(**args, local_rollout_forward_batch_size=16), 128)
    assert large.total > small.total
    merging = plan_ppo(lora, full, PPOConfig(**args, local_rollout_forward_batch_size=4,
                                             merge_adapter_for_generation=True), 128)
    # Qwen2.5-0.5B, all seven projections adapted: 24 layers × (896·896 + 2·896·128 + 896·896 + 3·896·4864) weights, bf16
    assert merging.total - small.total == merging.components["base weights copy (merge_adapter_for_generation)"] \
        == 24 * (896 * 896 * 2 + 2 * 896 * 128 + 3 * 896 * 4864) * 2
    four = plan_ppo(full, full, PPOConfig(**args), 128)
    assert {"policy", "value model", "reference", "reward model"} <= set(four.components)
    # a Llama-2-7B shape (no grouped KV heads): the generation's KV cache is the largest rollout term, and with
    # vLLM it lives in the server, as does any merging for generation
    mha = ModelSetup(Architecture(32000, 4096, 32, 32, 32, 11008, False), "bfloat16", False, 16, "all-linear", True,
                     True)
    long = dict(args, per_device_train_batch_size=2, gradient_accumulation_steps=8, response_length=1024,
                local_rollout_forward_batch_size=16)
    here = plan_ppo(mha, mha, PPOConfig(**long), 1024)
    served = plan_ppo(mha, mha, PPOConfig(**long, use_vllm=True), 1024)
    assert "rollout (KV cache + logits)" in here.components and served.total < here.total
    assert any("vLLM server" in note for note in served.notes)
    merging = plan_ppo(mha, mha, PPOConfig(**long, use_vllm=True, merge_adapter_for_generation=True), 1024)
    assert merging.total == served.total


def test_unknown_hub_model_is_named(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"stages": {"sft": {"model_name_or_path": "someone/unknown-model"}}}))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Cannot read the config of 'someone/unknown-model' offline" in err and "Traceback" not in err


def test_pipeline_refuses_a_recipe_the_gpu_cannot_hold(tmp_path, capsys, monkeypatch):
    """On a GPU the pipeline checks the plan before any stage loads a model (here a 1 GiB 'GPU')."""
    import icegrt_trl.cli as cli

    monkeypatch.setattr(cli, "_gpu_memory", lambda: 1 * GiB)
    out = tmp_path / "run"
    assert main(["pipeline", "recipes/tiny-offline.yaml", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not fit in 1 GiB" in err and "Lower per_device_train_batch_size" in err
    assert not (out / "sft").exists()


def test_rlp_is_planned_at_the_larger_of_its_reward_refit_and_its_ppo():
    """The rlp stage refits the reward model and runs PPO in one process; SmolLM2's GRM refit (LM head kept, 160
    tokens × 16) is the larger part, so the rlp plan is the reward plan, and not the PPO plan it was before."""
    from icegrt_trl.cli import RunContext, load_recipe
    from icegrt_trl.plan import plan_recipe

    recipe = load_recipe("recipes/smollm2-cpu.yaml")
    plans = {p.stage.split(" ")[0]: p for p in plan_recipe(recipe, RunContext.from_recipe(recipe, None),
                                                          prompt_length=64)}
    assert plans["reward"].total > plans["ppo"].total
    assert plans["rlp"].components == plans["reward"].components
    assert "the reward refit is this stage's peak" in plans["rlp"].notes[-1]
