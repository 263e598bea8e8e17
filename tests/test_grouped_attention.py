"""Grouped eager attention (icegrt_trl.ppo.grouped_attention): the outputs of transformers' eager attention without
its per-head key/value copies, for each listed decoder; used by the trainer on a CPU under bf16."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, MistralConfig, Qwen3Config
from transformers.models.llama import modeling_llama

from icegrt_trl import PPOConfig, PPOTrainer
from icegrt_trl.ppo.grouped_attention import IMPLEMENTATION, eager_implementation_for
from icegrt_trl.ppo.modeling import model_output, position_ids_from
from icegrt_trl.ppo.prefix import split_shared_prefix
from icegrt_trl.testbed import build_tokenizer, gold_reward, make_datasets, tiny_config

DIMS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, max_position_embeddings=64)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def gqa_config(arch: str, tok, **overrides):
    if arch in ("llama", "qwen2"):
        config = tiny_config(arch, tok, hidden_size=32, num_layers=2, num_heads=4)
        config.num_key_value_heads = 2
    else:
        kinds = {"mistral": MistralConfig, "qwen3": Qwen3Config}
        config = kinds[arch](vocab_size=len(tok), pad_token_id=tok.pad_token_id, **DIMS)
    for k, v in overrides.items():
        setattr(config, k, v)
    return config


def batch(tok, rows=3, width=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, len(tok), (rows, width), generator=g)
    mask = torch.ones_like(ids)
    for i in range(rows):  # left padding of 0, 2, 4 … columns
        mask[i, :2 * i] = 0
    return ids, mask


def both(config, seed=0):
    """The same weights under eager and under grouped attention (each model with its own config object: switching
    one model's attention switches every model sharing its config)."""
    torch.manual_seed(seed)
    eager = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    torch.manual_seed(seed)
    grouped = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    grouped.set_attn_implementation(eager_implementation_for(config))
    assert grouped.config._attn_implementation == IMPLEMENTATION
    assert eager.config._attn_implementation == "eager"
    return eager, grouped


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "qwen3"])
def test_grouped_attention_gives_eagers_outputs_bit_for_bit(arch, tok):
    eager, grouped = both(gqa_config(arch, tok))
    ids, mask = batch(tok)
    pos = position_ids_from(mask)
    with torch.no_grad():
        a = eager(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        b = grouped(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        assert torch.equal(a, b)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a = eager(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            b = grouped(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)


def test_grouped_attention_follows_a_sliding_window_mask(tok):
    eager, grouped = both(gqa_config("mistral", tok, sliding_window=3))
    ids, mask = batch(tok, width=12)
    with torch.no_grad():
        full = AutoModelForCausalLM.from_config(gqa_config("mistral", tok, sliding_window=None),
                                                attn_implementation="eager")
        full.load_state_dict(eager.state_dict())
        windowed = eager(input_ids=ids, attention_mask=mask).logits
        assert not torch.allclose(windowed, full(input_ids=ids, attention_mask=mask).logits)  # the window acts
        assert torch.equal(windowed, grouped(input_ids=ids, attention_mask=mask).logits)


def test_grouped_attention_gradients_match_eagers(tok):
    eager, grouped = both(gqa_config("llama", tok))
    eager.train(), grouped.train()
    ids, mask = batch(tok)
    for model in (eager, grouped):
        torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits, -1)[..., 5].mean().backward()
    for (name, p), q in zip(eager.named_parameters(), grouped.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_grouped_attention_reads_a_shared_prefix_cache(tok):
    """The trainer's shared-prompt-prefix forward (a KV cache of the prefix, then the rows' rest): as under eager."""
    eager, grouped = both(gqa_config("llama", tok))
    ids, mask = batch(tok, width=12)
    prefix = torch.randint(3, len(tok), (5,))
    for i in range(ids.shape[0]):
        ids[i, 2 * i:2 * i + 5] = prefix
    pos = position_ids_from(mask)
    split = split_shared_prefix(ids, mask, 5)
    with torch.no_grad():
        a = model_output(eager, ids, mask, pos, split).logits
        b = model_output(grouped, ids, mask, pos, split).logits
    assert a.shape[1] == ids.shape[1] - 5 and torch.equal(a, b)


def test_grouped_attention_makes_no_key_value_copies(tok, monkeypatch):
    calls = []
    original = modeling_llama.repeat_kv
    monkeypatch.setattr(modeling_llama, "repeat_kv", lambda x, n: calls.append(n) or original(x, n))
    eager, grouped = both(gqa_config("llama", tok))
    ids, mask = batch(tok)
    with torch.no_grad():
        eager(input_ids=ids, attention_mask=mask)
        assert calls == [2] * 4  # keys and values of 2 layers, each copied for 2 query heads
        calls.clear()
        grouped(input_ids=ids, attention_mask=mask)
    assert calls == []


def test_grouped_attention_only_for_listed_grouped_query_decoders(tok):
    assert eager_implementation_for(gqa_config("llama", tok)) == IMPLEMENTATION
    assert eager_implementation_for(tiny_config("llama", tok, num_heads=4)) == "eager"  # one key head per query head
    gemma = Gemma2Config(vocab_size=len(tok), **DIMS)  # soft-capped scores: its own eager attention
    assert eager_implementation_for(gemma) == "eager"


def test_cpu_bf16_trainer_uses_grouped_attention_and_keeps_step0_kl_exactly_zero(tmp_path, tok):
    prompts = make_datasets(num_sft=4, num_preferences=4, num_pmp=4, num_pref_eval=4, num_unlabeled=8,
                            num_eval=4)["unlabeled"]
    policy = AutoModelForCausalLM.from_config(gqa_config("llama", tok))
    args = PPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=True, report_to=[], per_device_train_batch_size=4,
                     num_mini_batches=1, num_ppo_epochs=1, max_steps=1, response_length=5, save_strategy="no",
                     disable_tqdm=True, num_sample_generations=0, stop_token="eos", seed=0,
                     cpu_bf16_padding_free=False)  # padded rows (tests/test_padding_free.py: the default)
    t = PPOTrainer(args=args, processing_class=tok, model=policy, reward_model=gold_reward, train_dataset=prompts)
    assert t.model.policy.config._attn_implementation == IMPLEMENTATION
    assert t.ref_model.config._attn_implementation == IMPLEMENTATION
    t.train()
    b = t._last_rollout
    assert torch.equal(b["logprobs"], b["ref_logprobs"])
    assert t.model.policy.config._attn_implementation == IMPLEMENTATION  # generation's SDPA switched back
